"""A labelled file replayed through the real broker into a real worker, then the run's report."""

from __future__ import annotations

import json

from pipeline.replay import replay
from pipeline.report import report

from .harness import Pipeline


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
        page = path.read_text()
        assert 'alt="confusion_matrix"' in page and 'alt="sentiment_timelines"' in page and "run-" in page
    finally:
        pipeline.stop_all()
