"""A labelled file replayed through the real broker into a real worker, then the run's report."""

from __future__ import annotations

import json
import re

from pipeline.replay import replay
from pipeline.report import report

from .harness import Pipeline, render


def test_replay_then_report(local_stack, tiny_bundle, tmp_path, unique, phrasebank):
    pipeline = Pipeline(name=f"rp{unique}", bundle=tiny_bundle, workdir=tmp_path)
    data = tmp_path / "news.csv"
    rows = [line.rsplit("@", 1) for line in open(phrasebank, encoding="latin-1").read().splitlines()[:150]]
    with open(data, "w") as handle:
        handle.write("text,label,tickers\n")
        for i, (text, label) in enumerate(rows):
            handle.write(f'"{text.replace(chr(34), "")}",{label},{["NOK", "AAPL"][i % 2]}\n')
        handle.write('"",positive,NOK\n"unknown label row",sideways,NOK\n')  # two bad rows
    try:
        pipeline.start_worker()
        settings = pipeline.settings
        first = replay(settings, data, rate=300, run_id=f"run-{unique}", progress=False)
        assert first.sent == 150 and first.bad_rows == {"empty text": 1, "unknown label": 1}
        pipeline.wait_indexed(150)
        # The same run sent again is recognised: still 150 documents, not 300.
        replay(settings, data, rate=300, run_id=f"run-{unique}", progress=False)
        ids = pipeline.wait_indexed(150)
        assert len(ids) == 150

        path = report(settings, f"run-{unique}", tmp_path / "report")
        summary = json.loads((path.parent / "summary.json").read_text())
        assert summary["messages"] == summary["labelled"] == 150
        assert 0 <= summary["accuracy"] <= 1 and sum(map(sum, summary["confusion_matrix"])) == 150
        assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
        # As a reader sees it: headless Chromium renders every section with its pictures.
        dom = render(path.as_uri(), tmp_path / "chromium-profile", screenshot=tmp_path / "report.png")
        for section in ("summary", "accuracy", "latency", "throughput", "tickers", "alerts", "dead-letters"):
            assert f'<section id="{section}">' in dom, section
        for picture in ("confusion_matrix", "latency", "throughput", "ticker_windows"):
            assert f'<img alt="{picture}" src="data:image/png;base64,' in dom, picture
        assert re.search(r"<td>accuracy</td><td>\d+\.\d%</td>", dom)
        assert (tmp_path / "report.png").stat().st_size > 50_000
    finally:
        pipeline.stop_all()
