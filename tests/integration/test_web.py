"""The worker's live web view, rendered by headless Chromium (Debian's package) against a real
worker fed through the real broker."""

from __future__ import annotations

import json
import re
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.bundle import open_bundle

from .harness import Pipeline, render, texts_by_prediction, wait_for


@pytest.fixture
def pipeline(local_stack, tiny_bundle, tmp_path, unique):
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "rules:\n  - {name: web-burst, kind: negative_share, threshold: 0.5, min_messages: 3, "
        "severity: page, resolve_after: 100}\n"
    )
    p = Pipeline(
        name=f"v{unique}",
        bundle=tiny_bundle,
        workdir=tmp_path,
        extra_env={"FINSENT_ALERT_RULES": str(rules), "FINSENT_WINDOW_LATENESS_S": "5", "FINSENT_WINDOW_IDLE_S": "2"},
    )
    yield p
    p.stop_all()


def test_live_view_shows_tickers_alerts_throughput_and_model(pipeline, tiny_bundle, phrasebank, tmp_path):
    negative, positive = texts_by_prediction(tiny_bundle, phrasebank)
    base = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    stream = []
    for i in range(30):  # three minutes: BAD only negative, GOOD only positive
        at = (base + timedelta(seconds=6 * i)).isoformat()
        stream.append({"id": f"bad-{i}", "text": negative[i], "tickers": ["BAD"], "published_at": at})
        stream.append({"id": f"good-{i}", "text": positive[i], "tickers": ["GOOD"], "published_at": at})
    for ticker in ("BAD", "GOOD"):
        stream.append(
            {
                "id": f"end-{ticker}",
                "text": positive[0],
                "tickers": [ticker],
                "published_at": (base + timedelta(minutes=5)).isoformat(),
            }
        )
    worker = pipeline.start_worker()
    pipeline.produce([json.dumps(m).encode() for m in stream])
    url = f"http://127.0.0.1:{worker.port}/"

    def live() -> dict:
        with urllib.request.urlopen(url + "api/live", timeout=5) as response:
            return json.loads(response.read())

    wait_for(lambda: live()["active_alerts"] and len(live()["topics"]) == 2, 120, "windows and the alert")

    dom = render(url, tmp_path / "chromium-profile")
    variant = open_bundle(pipeline.bundle).cpu_variant  # what export timed faster
    assert re.search(rf'id="model">tiny-1 \(CPUExecutionProvider, {variant}\)<', dom), dom[:2000]
    assert re.search(r'id="scored">\d+<', dom) and int(re.search(r'id="scored">(\d+)<', dom).group(1)) >= 62
    rows = dict(re.findall(r'<tr data-topic="(\w+)"><td>\1</td><td>[^<]+</td><td>(\d+)</td>', dom))
    assert set(rows) == {"BAD", "GOOD"} and all(int(n) > 0 for n in rows.values())
    assert re.search(r'<tr class="page" data-rule="web-burst" data-topic="BAD">', dom)
    assert 'data-topic="GOOD"><td>page' not in dom  # only BAD's alert is active
    assert "<svg" in dom  # the trend line was drawn
    assert re.search(r'id="updated">\d', dom), "the page did not refresh from /api/live"
