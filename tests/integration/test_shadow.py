"""Shadow evaluation through the real broker and Elasticsearch: a shadow worker's candidate scores
a replay beside the serving worker, the report's agreement equals an offline comparison,
promotion switches every worker and is audited, a rollback goes back, and a SIGKILL of the shadow
worker leaves the shadow topic exactly-once."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.bundle import open_bundle
from pipeline.classify import Classifier
from pipeline.schemas import LABELS, ScoredRecord
from pipeline.shadow import spans_of

from .harness import Pipeline, finsent, wait_for


def _labelled_file(phrasebank: str, path: Path, rows: int, offset: int = 0) -> Path:
    lines = open(phrasebank, encoding="latin-1").read().splitlines()[offset : offset + rows]
    with open(path, "w") as handle:
        handle.write("text,label,tickers\n")
        for i, line in enumerate(lines):
            text, label = line.rsplit("@", 1)
            handle.write(f'"Nokia and Apple: {text.replace(chr(34), "")}",{label},{["NOK", "AAPL"][i % 2]}\n')
    return path


def _serving_version(worker) -> str | None:
    versions = [
        dict(labels)["version"] for labels, value in worker.metric_samples("finsent_model_info").items() if value
    ]
    return versions[0] if len(versions) == 1 else None


def test_shadow_report_promote_and_rollback(local_stack, tiny_bundle, tiny_heads_bundle, tmp_path, unique, phrasebank):
    serving_link = tmp_path / "serving"
    serving_link.symlink_to(tiny_bundle)
    pipeline = Pipeline(
        name=f"sh{unique}",
        bundle=serving_link,
        workdir=tmp_path,
        extra_env={"FINSENT_SHADOW_BUNDLE": str(tiny_heads_bundle), "FINSENT_SHADOW_MAX_BEHIND_S": "600"},
    )
    run = f"run-{unique}"
    data = _labelled_file(phrasebank, tmp_path / "news.csv", 60)
    try:
        worker, shadow_worker = pipeline.start_worker(), pipeline.start_shadow()
        replay = finsent(pipeline.env, "replay", str(data), "--rate", "200", "--run-id", run)
        assert replay.returncode == 0, replay.stderr
        pipeline.wait_indexed(60)
        wait_for(lambda: len(pipeline.documents("shadow")) >= 60, 120, "60 shadow documents")

        # Exactly once on the shadow topic, and the serving outputs untouched by the candidate.
        scored = [ScoredRecord.model_validate(r) for r in pipeline.documents("scored")]
        shadow = pipeline.assert_once_each("FINSENT_TOPIC_SHADOW", {r.id for r in scored})
        assert {r.model_version for r in scored} == {"tiny-1"}
        assert {s["candidate_model_version"] for s in shadow} == {"tiny-heads-1"}
        on_scored_topic = pipeline.read_topic("FINSENT_TOPIC_SCORED", 60, isolation_level="read_committed")
        assert {r["model_version"] for r in on_scored_topic} == {"tiny-1"}
        assert shadow_worker.metric("finsent_shadow_records_total", outcome="scored") == 60
        assert worker.metric("finsent_shadow_records_total", outcome="scored") == 0  # not on the serving path

        # The report's agreement is the offline comparison of the two bundles on the same texts.
        candidate = Classifier(open_bundle(tiny_heads_bundle), intra_op_threads=1)
        inference = candidate.infer([r.text for r in scored], [spans_of(r) for r in scored])
        offline = {r.id: LABELS[int(row.argmax())] == r.label for r, row in zip(scored, inference.message, strict=True)}
        report = finsent(
            pipeline.env, "report", "--shadow", "--run-id", run, "--min-agreement", "0", "--max-accuracy-drop", "1",
            "--output", str(tmp_path / "reports"),
        )  # fmt: skip
        assert report.returncode == 0, report.stdout + report.stderr
        summary = json.loads(next((tmp_path / "reports").glob("shadow-*/shadow-summary.json")).read_text())
        assert summary["records"] == 60 and summary["labelled"] == 60
        assert summary["agreement"] == sum(offline.values()) / len(offline)
        assert {s["id"]: s["agree"] for s in shadow} == offline
        assert summary["verdict"] == {"promote": True, "reasons": []}
        assert {"both", "candidate_only", "serving_only"} <= set(summary["alerts"])  # the shipped rules

        # A verdict against the candidate refuses the promotion and exits 1; the link stays.
        strict = ["--run-id", run, "--min-agreement", "1", "--max-accuracy-drop", "0"]
        if summary["agreement"] < 1 or summary["accuracy"]["candidate"] < summary["accuracy"]["serving"]:
            refused = finsent(pipeline.env, "promote", str(tiny_heads_bundle), *strict)
            assert refused.returncode == 1 and "not promoted" in refused.stderr, refused.stderr
            assert serving_link.resolve() == tiny_bundle.resolve()
        no_evidence = finsent(pipeline.env, "promote", str(tiny_heads_bundle))
        assert no_evidence.returncode == 1 and "no shadow report" in no_evidence.stderr

        # Promotion: the link switches, the worker swaps to the candidate, an audit record is written.
        loose = ["--run-id", run, "--min-agreement", "0", "--max-accuracy-drop", "1", "--by", "risk-desk"]
        promoted = finsent(pipeline.env, "promote", str(tiny_heads_bundle), *loose)
        assert promoted.returncode == 0, promoted.stderr
        assert serving_link.resolve() == tiny_heads_bundle.resolve()
        wait_for(lambda: _serving_version(worker) == "tiny-heads-1", 60, "the worker serving the candidate")
        es = pipeline.es()
        es.indices.refresh(index=f"{pipeline.name}-audit")
        (audit,) = [h["_source"] for h in es.search(index=f"{pipeline.name}-audit")["hits"]["hits"]]
        assert (audit["action"], audit["by"], audit["from_version"], audit["to_version"]) == (
            "promote",
            "risk-desk",
            "tiny-1",
            "tiny-heads-1",
        )
        assert audit["evidence"]["agreement"] == summary["agreement"] and audit["forced"] is False

        # Rollback: back to where the switch came from, audited too.
        rolled = finsent(pipeline.env, "promote", "--rollback")
        assert rolled.returncode == 0, rolled.stderr
        assert serving_link.resolve() == tiny_bundle.resolve()
        wait_for(lambda: _serving_version(worker) == "tiny-1", 60, "the worker serving the old model again")
        es.indices.refresh(index=f"{pipeline.name}-audit")
        actions = sorted(h["_source"]["action"] for h in es.search(index=f"{pipeline.name}-audit")["hits"]["hits"])
        assert actions == ["promote", "rollback"]
    finally:
        pipeline.stop_all()


def test_a_sigkill_during_shadow_scoring_leaves_the_shadow_topic_exactly_once(
    local_stack, tiny_bundle, tiny_heads_bundle, tmp_path, unique, phrasebank
):
    pipeline = Pipeline(
        name=f"sk{unique}",
        bundle=tiny_bundle,
        workdir=tmp_path,
        extra_env={"FINSENT_SHADOW_BUNDLE": str(tiny_heads_bundle), "FINSENT_SHADOW_MAX_BEHIND_S": "3600"},
    )
    data = _labelled_file(phrasebank, tmp_path / "news.csv", 400)
    try:
        pipeline.start_worker()
        shadow_worker = pipeline.start_shadow()
        replay = finsent(pipeline.env, "replay", str(data), "--rate", "400", "--run-id", f"run-{unique}")
        assert replay.returncode == 0, replay.stderr
        # Killed while the candidate is mid-stream: some shadow records out, not all.
        wait_for(lambda: shadow_worker.metric("finsent_shadow_records_total", outcome="scored") >= 40, 120, "shadow")
        shadow_worker.kill()
        assert len(pipeline.documents("shadow")) < 400, "the kill came after the shadow stage had finished"
        pipeline.start_shadow(101)
        ids = set(pipeline.wait_indexed(400, timeout_s=240))
        wait_for(lambda: len(pipeline.documents("shadow")) >= 400, 240, "400 shadow documents")
        pipeline.assert_once_each("FINSENT_TOPIC_SHADOW", ids, timeout_s=120)
        pipeline.assert_once_each("FINSENT_TOPIC_SCORED", ids, timeout_s=120)
    finally:
        pipeline.stop_all()
