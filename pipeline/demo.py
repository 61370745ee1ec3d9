"""``finsent demo``: the whole product in one command, on this machine.

Starts the local stack, trains a model bundle on Financial PhraseBank (or reuses the cached one),
starts a worker on topics and indices of its own, replays labelled Twitter financial news with
compressed synthetic timestamps (so windows close and alerts can fire within minutes), shows a
live terminal view while the web view runs, and ends with the report's path. Ctrl-C stops the
worker and the services the demo started; nothing is left running.
"""

from __future__ import annotations

import json
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

from . import stack
from .config import Settings

console = Console()
DEMO_RULES = Path(__file__).resolve().parents[1] / "deploy" / "alerts" / "demo-rules.yml"


def demo_bundle(settings: Settings, data_dir: Path, epochs: int) -> Path:
    """The cached demo bundle, trained and exported on first use."""
    home = settings.stack_home / "models" / "demo"
    bundle = home / "bundle"
    if (bundle / "manifest.json").exists():
        console.print(f"model: reusing {bundle}")
        return bundle
    from training.config import TrainConfig
    from training.export import export
    from training.train import train

    dataset = data_dir / "financial_phrasebank" / "Sentences_AllAgree.txt"
    console.print(f"model: fine-tuning the default encoder on {dataset.name} ({epochs} epoch(s); cached afterwards)")
    train(TrainConfig(datasets=[str(dataset)], output=str(home / "run"), epochs=epochs, max_length=64))
    # A one-epoch model has near-tied logits on more texts, so allow INT8 a little more disagreement.
    export(home / "run" / "best", bundle, min_int8_agreement=0.97, log=console.print)
    return bundle


def _live(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "api/live", timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


def _view(state: dict | None, url: str, replay: dict) -> Group:
    header = Table.grid(padding=(0, 3))
    if state:
        model = state["model"]
        header.add_row(f"model [bold]{model['version']}[/bold] ({model['provider']}, {model['variant']})")
        header.add_row(
            f"throughput [bold]{state['throughput_msgs_per_s']}[/bold] msg/s   "
            f"scored [bold]{state['scored_total']}[/bold] / sent {replay.get('sent', 0)}   "
            f"web view [link={url}]{url}[/link]"
        )
    else:
        header.add_row(f"waiting for the worker at {url} …")
    tickers = Table(
        "ticker/topic", "window start", "messages", "sentiment", "negative", title="busiest tickers (1 min windows)"
    )
    for topic in (state or {}).get("topics", [])[:12]:
        latest = topic["latest"]
        sentiment = latest["sentiment"]
        colour = "red" if sentiment is not None and sentiment < 0 else "green"
        tickers.add_row(
            topic["topic"],
            latest["start"][11:16],
            str(latest["messages"]),
            f"[{colour}]{sentiment:+.2f}[/{colour}]" if sentiment is not None else "–",
            f"{latest['negative']:.0%}",
        )
    alerts = Table("severity", "rule", "topic", "summary", title="active alerts")
    for alert in (state or {}).get("active_alerts", [])[:8]:
        alerts.add_row(alert["severity"], alert["rule"], alert["topic"], alert["summary"])
    return Group(header, tickers, alerts)


def run_demo(
    settings: Settings,
    data_dir: Path,
    messages: int = 3000,
    rate: float = 150.0,
    spacing_s: float = 0.5,
    epochs: int = 1,
    output: Path = Path("reports"),
) -> Path | None:
    from .replay import replay
    from .report import report

    if not data_dir.is_dir():
        raise FileNotFoundError(f"labelled data not found at {data_dir} (pass --data)")
    home = settings.stack_home
    already_up = {s.name for s in stack.status(home) if s.healthy}
    worker = None
    try:
        console.print("stack: starting Kafka, Elasticsearch, Prometheus and Alertmanager on 127.0.0.1 …")
        stack.up(home)
        bundle = demo_bundle(settings, data_dir, epochs)
        name = f"finsent-demo-{datetime.now(UTC):%Y%m%d%H%M%S}"
        env = {
            **os.environ,
            "FINSENT_MODEL_BUNDLE": str(bundle),
            "FINSENT_CONSUMER_GROUP": name,
            "FINSENT_TOPIC_RAW": f"{name}.raw",
            "FINSENT_TOPIC_SCORED": f"{name}.scored",
            "FINSENT_TOPIC_DEADLETTER": f"{name}.deadletter",
            "FINSENT_TOPIC_AGGREGATES": f"{name}.aggregates",
            "FINSENT_TOPIC_ALERTS": f"{name}.alerts",
            "FINSENT_ES_INDEX_PREFIX": name,
            "FINSENT_STATE_DIR": str(home / "demo-state" / name),
            "FINSENT_ALERT_RULES": str(DEMO_RULES),
            "FINSENT_WINDOW_IDLE_S": "3",
        }
        demo_settings = Settings(
            **{
                k.removeprefix("FINSENT_").lower(): v
                for k, v in env.items()
                if k.startswith("FINSENT_") and k != "FINSENT_CONFIG"
            }
        )
        log = home / "demo-worker.log"
        console.print(f"worker: starting (log {log}) …")
        with open(log, "ab") as handle:
            worker = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "worker", "--loglevel", "warning"],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://{demo_settings.web_host}:{demo_settings.web_port}/"
        deadline = time.monotonic() + 180
        while _live(url) is None:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {log}")
            time.sleep(1)

        data = data_dir / "twitter_financial_news_sentiment" / "sent_train.csv"
        progress: dict = {}

        def send():
            result = replay(
                demo_settings, data, rate=rate, limit=messages, run_id=name, spacing_s=spacing_s, progress=False
            )
            progress.update(sent=result.sent, done=True)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        progress["sent"] = 0
        started = time.monotonic()
        with Live(_view(None, url, progress), console=console, refresh_per_second=2) as live:
            while time.monotonic() - started < messages / rate + 180:
                progress["sent"] = progress.get("sent") or min(messages, int((time.monotonic() - started) * rate))
                state = _live(url)
                live.update(_view(state, url, progress))
                if progress.get("done") and state and state["scored_total"] >= progress["sent"]:
                    time.sleep(5)  # let the last windows close
                    live.update(_view(_live(url), url, progress))
                    break
                time.sleep(1)
        path = report(demo_settings, name, output / name)
        summary = json.loads((path.parent / "summary.json").read_text())
        console.print(
            f"run {name}: {summary['messages']} scored, accuracy {summary.get('accuracy', float('nan')):.3f}, "
            f"macro-F1 {summary.get('macro_f1', float('nan')):.3f}, {summary['alerts']} alerts"
        )
        console.print(f"report: [bold]{path}[/bold]")
        return path
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
