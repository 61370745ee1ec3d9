"""``finsent demo``: the whole product in one command, on this machine.

Starts the local stack, picks a model (the bundle at ``models/default`` when there is one, else a
quick one trained once and cached), starts a worker on topics and indices of its own and replays
the market session (data/demo/: 40 minutes of event time, 20 tickers, three scripted events) at a
pace one worker keeps up with. The terminal shows the busiest tickers' windows and the alerts as
they fire and resolve (the worker's web view shows the same); the end prints a scorecard of the
scripted alerts against what fired, and writes the report. Ctrl-C stops the worker and the
services the demo started; nothing is left running.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from . import scenario, stack
from .bundle import open_bundle
from .config import Settings

console = Console()
DEFAULT_BUNDLE = scenario.REPO / "models" / "default"
QUICK_EXAMPLES = 4000  # the quick model's training examples: about 3 min on 2 cores
SPARK = "▁▂▃▄▅▆▇█"


def demo_bundle(settings: Settings, data_dir: Path, epochs: int) -> tuple[Path, str]:
    """(bundle, how to describe it): the default model when built, else the cached quick one."""
    if (DEFAULT_BUNDLE / "manifest.json").exists():
        return DEFAULT_BUNDLE, f"the default model ({DEFAULT_BUNDLE})"
    home = settings.stack_home / "models" / "quick"
    bundle = home / "bundle"
    described = f"a quick model ({epochs} epoch on {QUICK_EXAMPLES:,} examples; a bundle at models/default is used instead when present)"
    if (bundle / "manifest.json").exists():
        return bundle, described
    from training.config import TrainConfig, default_datasets
    from training.export import export
    from training.train import train

    console.print(f"model: training {described}, cached in {home} …")
    config = TrainConfig(
        output=str(home / "run"),
        datasets=default_datasets(data_dir),
        epochs=epochs,
        max_examples=QUICK_EXAMPLES,
    )
    train(config)
    # A one-epoch model has near-tied logits on more texts, so allow INT8 a little more disagreement.
    export(home / "run" / "best", bundle, min_int8_agreement=0.97, log=console.print)
    return bundle, described


def _live(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "api/live", timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


def _spark(values: list) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return ""
    low, high = min(known), max(known)
    span = (high - low) or 1
    return "".join(" " if v is None else SPARK[int((v - low) / span * (len(SPARK) - 1))] for v in values)


def _view(state: dict | None, url: str, progress: dict, model: str) -> Group:
    header = Table.grid(padding=(0, 3))
    header.add_row(f"model: {model}")
    if state:
        header.add_row(
            f"event time [bold]{progress.get('event_time', '–')}[/bold]   "
            f"sent [bold]{progress.get('sent', 0):,}[/bold] / {progress['total']:,}   "
            f"scored [bold]{state['scored_total']:,}[/bold]   "
            f"throughput [bold]{state['throughput_msgs_per_s']:.0f}[/bold] msg/s   "
            f"web view [link={url}]{url}[/link]"
        )
    else:
        header.add_row(f"waiting for the worker at {url} …")
    tickers = Table(
        "ticker", "window", "messages", "sentiment", "negative", "volume trend", "sentiment trend",
        title=f"busiest tickers ({(state or {}).get('window', '1m')} windows)",
    )  # fmt: skip
    for topic in (state or {}).get("topics", [])[:10]:
        latest = topic["latest"]
        sentiment = latest["sentiment"]
        colour = "red" if sentiment is not None and sentiment < 0 else "green"
        tickers.add_row(
            topic["topic"],
            latest["start"][11:16],
            str(latest["messages"]),
            f"[{colour}]{sentiment:+.2f}[/{colour}]" if sentiment is not None else "–",
            f"{latest['negative']:.0%}",
            _spark(topic.get("volume", [])),
            _spark(topic.get("trend", [])),
        )
    alerts = Table("", "severity", "rule", "ticker", "window", "summary", title="alerts")
    for alert in (state or {}).get("active_alerts", [])[:6]:
        alerts.add_row("[red]FIRING[/red]", alert["severity"], alert["rule"], alert["topic"],
                       alert["window_start"][11:16], alert["summary"])  # fmt: skip
    for alert in (state or {}).get("recent_resolved", [])[:6]:
        alerts.add_row("[green]resolved[/green]", alert["severity"], alert["rule"], alert["topic"],
                       f"{alert['window_start'][11:16]}-{(alert.get('resolved_at') or '')[11:16]}", alert["summary"])  # fmt: skip
    return Group(header, tickers, alerts)


def scorecard_table(card: scenario.Scorecard) -> Table:
    table = Table("scripted event", "ticker", "rule", "scripted", "fired", "resolved", title="scorecard")
    for row in card.found:
        fired = f"[green]min {row['fired_min']:.0f}[/green]" if row["fired_at"] else "[red]missed[/red]"
        resolved = f"min {row['resolved_min']:.0f}" if row.get("resolved_at") else "–"
        table.add_row(
            row["event"], row["ticker"], row["rule"], f"min {row['scripted'].removesuffix(' min')}", fired, resolved
        )
    for row in card.silent:
        held = "[green]silent[/green]" if row["fired_at"] is None else f"[red]fired min {row['fired_min']:.0f}[/red]"
        table.add_row(row["event"], row["ticker"], f"{row['rule']} (must not fire)", row["scripted"], held, "–")
    for alert in card.false_alerts:
        table.add_row("[red]false alert[/red]", alert["topic"], alert["rule"], "–", alert["fired_at"][11:16], "")
    for event in card.skipped:
        table.add_row(f"[dim]{event}[/dim]", "", "[dim]skipped: the model has no head for it[/dim]", "", "", "")
    return table


def _worker_env(settings: Settings, name: str, bundle: Path) -> dict:
    return {
        **os.environ,
        "FINSENT_MODEL_BUNDLE": str(bundle),
        "FINSENT_CONSUMER_GROUP": name,
        "FINSENT_TOPIC_RAW": f"{name}.raw",
        "FINSENT_TOPIC_SCORED": f"{name}.scored",
        "FINSENT_TOPIC_DEADLETTER": f"{name}.deadletter",
        "FINSENT_TOPIC_AGGREGATES": f"{name}.aggregates",
        "FINSENT_TOPIC_ALERTS": f"{name}.alerts",
        "FINSENT_ES_INDEX_PREFIX": name,
        "FINSENT_STATE_DIR": str(settings.stack_home / "demo-state" / name),
        "FINSENT_ALERT_RULES": str(scenario.RULES_FILE),
        "FINSENT_WINDOW_IDLE_S": "3",
    }


def _settings_of(env: dict) -> Settings:
    return Settings(
        **{
            k.removeprefix("FINSENT_").lower(): v
            for k, v in env.items()
            if k.startswith("FINSENT_") and k != "FINSENT_CONFIG"
        }
    )


def _quiet_libraries() -> None:
    # A replay may start before the worker has created every topic: kafka-python logs that
    # expected, retried condition as an error.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def run_demo(
    settings: Settings,
    session: Path,
    data_dir: Path,
    speedup: float = 20.0,
    epochs: int = 1,
    output: Path = Path("reports"),
) -> Path | None:
    from .admin import ensure_topics

    if not session.is_file():
        raise FileNotFoundError(f"demo session not found at {session} (pass --session, or run `finsent scenario`)")
    _quiet_libraries()
    rows = scenario.read_session(session)
    home = settings.stack_home
    already_up = {s.name for s in stack.status(home) if s.healthy}
    worker = None
    try:
        console.print("stack: starting Kafka, Elasticsearch, Prometheus and Alertmanager on 127.0.0.1 …")
        stack.up(home)
        bundle, model = demo_bundle(settings, data_dir, epochs)
        console.print(f"model: {model}")
        name = f"finsent-demo-{datetime.now(UTC):%Y%m%d%H%M%S}"
        env = _worker_env(settings, name, bundle)
        demo_settings = _settings_of(env)
        ensure_topics(demo_settings)
        worker, url = _start_worker(env, demo_settings, home / "demo-worker.log")
        _wait_for_assignment(demo_settings, deadline=time.monotonic() + 120)
        _watch(demo_settings, session, rows, name, speedup, url, model)
        heads = open_bundle(bundle, verify_checksums=False).heads or {}
        return _score_and_report(demo_settings, rows, name, output, tuple(heads))
    except KeyboardInterrupt:
        console.print("interrupted: stopping")
        return None
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        started_here = [s.name for s in stack.services(home) if s.name not in already_up]
        if started_here:
            stack.down(home, started_here)


def _start_worker(env: dict, settings: Settings, log: Path) -> tuple[subprocess.Popen, str]:
    """Starts the demo's worker and waits until its web view answers."""
    console.print(f"worker: starting (log {log}) …")
    with open(log, "ab") as handle:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "--loglevel", "warning"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{settings.web_host}:{settings.web_port}/"
    deadline = time.monotonic() + 180
    while _live(url) is None:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start; see {log}")
        time.sleep(1)
    return worker, url


def _watch(settings: Settings, session: Path, rows: list[dict], name: str, speedup: float, url: str, model: str):
    """Replays the session on a thread and shows the live view until its last windows closed."""
    from .replay import replay

    first = datetime.fromisoformat(rows[0]["published_at"].replace("Z", "+00:00"))
    seconds = (datetime.fromisoformat(rows[-1]["published_at"].replace("Z", "+00:00")) - first).total_seconds()
    console.print(
        f"replay: {len(rows):,} messages, {seconds / 60:.0f} minutes of event time in {seconds / speedup:.0f} s "
        f"({speedup:g}x, about {len(rows) / (seconds / speedup):.0f} msg/s)"
    )
    progress: dict = {"total": len(rows), "sent": 0}
    offsets = [_offset(r, first) for r in rows]
    began = time.monotonic()
    closed_at = None

    def send():
        result = replay(settings, session, speedup=speedup, run_id=name, fmt="jsonl", progress=False)
        progress.update(sent=result.sent, done=True)

    threading.Thread(target=send, daemon=True).start()
    with Live(_view(None, url, progress, model), console=console, refresh_per_second=2) as live:
        while time.monotonic() - began < seconds / speedup + 240:
            elapsed = (time.monotonic() - began) * speedup
            progress["event_time"] = f"{datetime.fromtimestamp(first.timestamp() + min(elapsed, seconds), UTC):%H:%M}"
            if not progress.get("done"):
                progress["sent"] = bisect.bisect_right(offsets, elapsed)
            state = _live(url)
            live.update(_view(state, url, progress, model))
            if progress.get("done") and state and state["scored_total"] >= progress["sent"]:
                if closed_at is None and _last_minute_closed(state, rows[-1]["published_at"]):
                    closed_at = time.monotonic()
                # Then a little longer for alerts the last windows resolve.
                if closed_at and (not state["active_alerts"] or time.monotonic() - closed_at > 15):
                    break
            time.sleep(1)


def _score_and_report(settings: Settings, rows: list[dict], name: str, output: Path, heads: tuple[str, ...]) -> Path:
    from .report import alerts_from_elasticsearch, report

    first = datetime.fromisoformat(rows[0]["published_at"].replace("Z", "+00:00"))
    times = [datetime.fromisoformat(r["published_at"].replace("Z", "+00:00")) for r in rows]
    topics = {name for r in rows for name in scenario.labels_by_name(r)}
    alerts = scenario.latest_episodes(alerts_from_elasticsearch(settings, topics, min(times), max(times)))
    card = scenario.score(alerts, start=first, heads=heads)
    console.print(scorecard_table(card))
    path = report(settings, name, output / name, scorecard=card)
    summary = json.loads((path.parent / "summary.json").read_text())
    latency = summary.get("latency_ms", {})
    console.print(
        f"run {name}: {summary['messages']:,} scored, accuracy {summary.get('accuracy', float('nan')):.1%}, "
        f"macro-F1 {summary.get('macro_f1', float('nan')):.3f}, latency p50 {latency.get('p50', 0):,.0f} ms / "
        f"p99 {latency.get('p99', 0):,.0f} ms, {len(card.found) - sum(not r['fired_at'] for r in card.found)} of "
        f"{len(card.found)} scripted alerts, {len(card.false_alerts)} false"
    )
    console.print(f"report: [bold]{path}[/bold]")
    return path


def _wait_for_assignment(settings: Settings, deadline: float) -> None:
    """Until the worker's consumer group is stable with its partitions assigned: messages sent
    before then wait for the group to form, which would show as seconds of latency."""
    from .clients import kafka_admin

    admin = kafka_admin(settings)
    try:
        while time.monotonic() < deadline:
            group = admin.describe_groups([settings.consumer_group]).get(settings.consumer_group, {})
            if group.get("group_state") == "Stable" and group.get("members"):
                return
            time.sleep(1)
    finally:
        admin.close()


def _offset(row: dict, first: datetime) -> float:
    return (datetime.fromisoformat(row["published_at"].replace("Z", "+00:00")) - first).total_seconds()


def _last_minute_closed(state: dict, last_published: str) -> bool:
    """The window holding the session's last message has closed (for the busiest tickers)."""
    latest = max((t["latest"]["start"][:16] for t in state.get("topics", [])), default="")
    return latest >= last_published[:16]
