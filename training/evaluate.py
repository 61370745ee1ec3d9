"""Evaluation of a checkpoint or a model bundle: metrics, confusion matrix picture, report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pipeline.schemas import LABELS

from .metrics import accuracy_by_group, classification_metrics


def plot_confusion_matrix(matrix: list[list[int]], path: Path, title: str, labels=LABELS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(matrix)
    size = 4.8 if len(labels) <= 3 else 11
    fig, ax = plt.subplots(figsize=(size, size * 0.875), dpi=120)
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=0 if len(labels) <= 3 else 90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(
                j,
                i,
                str(data[i, j]),
                ha="center",
                va="center",
                fontsize=10 if len(labels) <= 3 else 7,
                color="white" if data[i, j] > data.max() / 2 else "black",
            )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_report(result: dict, png_name: str) -> str:
    m = result["metrics"]
    lines = [
        f"# finsent evaluation: {result['model']}" + (f" ({result['head']} head)" if result.get("head") else ""),
        "",
        f"- variant: `{result['variant']}`, data: {', '.join(result['datasets'])} (split `{result['split']}`, {m['n']} examples)",
        f"- accuracy **{m['accuracy']:.4f}**, macro-F1 **{m['macro_f1']:.4f}**, expected calibration error {m['ece']:.4f}",
        f"- throughput {result['throughput_msgs_per_s']:.1f} messages/s (batch {result['batch_size']}, tokenisation included)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, c in m["per_class"].items():
        lines.append(f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
    if result.get("disagreeing", {}).get("accuracy") is not None:
        d = result["disagreeing"]
        lines += [
            "",
            f"- headlines whose entities disagree: {d['headlines']} ({d['entities']} entities), accuracy **{d['accuracy']:.4f}**",
        ]
    if result.get("by_agreement"):
        lines += ["", "| annotators agreeing (Financial PhraseBank) | examples | accuracy |", "|---|---|---|"]
        lines += [f"| {level} | {g['n']} | {g['accuracy']:.4f} |" for level, g in result["by_agreement"].items()]
    lines += ["", f"![confusion matrix]({png_name})", ""]
    return "\n".join(lines)


def _split_facts(model_path: Path, is_bundle: bool) -> tuple[int, int, list[str]]:
    """(split seed, max length, training files) as the bundle or checkpoint records them."""
    if is_bundle:
        from pipeline.bundle import open_bundle

        bundle = open_bundle(model_path)
        return bundle.manifest["split_seed"], bundle.max_length, [d["path"] for d in bundle.manifest["training_data"]]
    meta = json.loads((model_path / "finsent_checkpoint.json").read_text())
    return meta["data"]["split_seed"], meta["max_length"], list(meta["data"]["files"])


def _examples(datasets: list[str], split_name: str, seed: int, trained_on: list[str], skip_bad_rows: bool):
    """The examples to score and the loaded dataset (for its bad-row counts)."""
    from .data import load_datasets, split

    if split_name == "all":
        dataset = load_datasets(datasets, skip_bad_rows=skip_bad_rows)
        return dataset.examples, dataset
    # Re-create the training split over all the files the model was trained on (a combined
    # run splits them together), then keep the part that came from the requested files.
    wanted = {Path(d).name for d in datasets}
    unknown = wanted - {Path(t).name for t in trained_on}
    if unknown:
        raise ValueError(
            f"{', '.join(sorted(unknown))} was not part of this model's training data "
            f"({', '.join(Path(t).name for t in trained_on)}); use --split all for unseen data"
        )
    by_name = {Path(d).name: d for d in datasets}
    sources = [by_name.get(Path(t).name, t) for t in trained_on]
    missing = [s for s in sources if not Path(s).exists()]
    if missing:
        raise ValueError(f"the training split needs {', '.join(missing)}; pass them with --dataset")
    dataset = load_datasets(sources, skip_bad_rows=skip_bad_rows)
    return [e for e in split(dataset, seed=seed).part(split_name) if e.source in wanted], dataset


def _by_agreement(examples, predictions: list[int], datasets: list[str]) -> dict[str, dict]:
    """Accuracy per annotator-agreement level for the Financial PhraseBank examples (where the
    errors sit: a sentence half the annotators read otherwise is a different test from a unanimous one)."""
    from .data import LABEL_TO_ID, PHRASEBANK_AGREEMENT, phrasebank_agreement

    levels = {Path(d).name: phrasebank_agreement(d) for d in datasets}
    groups = [levels.get(e.source, {}).get(e.text) for e in examples]
    order = [level for _, level in PHRASEBANK_AGREEMENT]
    return accuracy_by_group([LABEL_TO_ID[e.label] for e in examples], predictions, groups, order)


def _logits(model_path: Path, is_bundle: bool, variant: str, texts: list[str], max_length: int, batch_size: int):
    """The probabilities' logits as the worker (ONNX variants) or the checkpoint (torch) gives them."""
    if variant == "torch":
        from .inference import best_device, predict_logits
        from .model import SentimentClassifier

        if is_bundle:
            raise ValueError(f"{model_path} is a bundle (ONNX only): --variant torch needs the training checkpoint")
        model, tokenizer, _ = SentimentClassifier.load(model_path)
        return predict_logits(model.to(best_device()), tokenizer, texts, max_length, batch_size=batch_size)
    if not is_bundle:
        raise ValueError(f"{model_path} is a checkpoint: evaluate it with --variant torch, or export it first")
    from pipeline.bundle import open_bundle
    from pipeline.classify import Classifier

    classifier = Classifier(open_bundle(model_path), variant=variant, batch_size=batch_size)
    return classifier.logits(texts) / classifier.temperature  # the probabilities the worker writes


def _write_reports(result: dict, confusion: list[list[int]], json_out: Path, labels=LABELS) -> None:
    """JSON, Markdown and the confusion-matrix picture beside each other."""
    json_out.parent.mkdir(parents=True, exist_ok=True)
    png = json_out.with_suffix(".confusion.png")
    head = f"{result['head']} head, " if result.get("head", "message") != "message" else ""
    title = f"{Path(result['model']).name} ({head}{result['variant']}, {result['split']})"
    plot_confusion_matrix(confusion, png, title, labels)
    json_out.write_text(json.dumps(result, indent=2))
    json_out.with_suffix(".md").write_text(markdown_report(result, png.name))


def evaluate(
    model_path: Path,
    datasets: list[str],
    split_name: str = "test",
    variant: str = "int8",
    json_out: Path | None = None,
    batch_size: int = 32,
    skip_bad_rows: bool = False,
) -> dict:
    """Evaluates a bundle (ONNX variants) or a checkpoint (``variant='torch'``) on labelled data.

    ``split_name`` other than ``all`` reproduces the training split from the seed the model records.
    """
    from .data import LABEL_TO_ID

    model_path = Path(model_path)
    is_bundle = (model_path / "manifest.json").exists()
    seed, max_length, trained_on = _split_facts(model_path, is_bundle)
    examples, dataset = _examples(datasets, split_name, seed, trained_on, skip_bad_rows)
    texts = [e.text for e in examples]
    y_true = [LABEL_TO_ID[e.label] for e in examples]

    started = time.perf_counter()
    logits = _logits(model_path, is_bundle, variant, texts, max_length, batch_size)
    elapsed = time.perf_counter() - started

    metrics = classification_metrics(y_true, logits)
    result = {
        "model": str(model_path),
        "variant": variant,
        "datasets": [str(d) for d in datasets],
        "split": split_name,
        "split_seed": seed,
        "batch_size": batch_size,
        "throughput_msgs_per_s": len(texts) / elapsed if elapsed else 0.0,
        "metrics": {k: v for k, v in metrics.items() if k != "predictions"},
        "bad_rows": dict(dataset.bad_rows),
        "by_agreement": _by_agreement(examples, metrics["predictions"], datasets),
    }
    if json_out is not None:
        _write_reports(result, metrics["confusion_matrix"], Path(json_out))
    result["predictions"] = metrics["predictions"]
    return result


HEADS = ("message", "topic", "entity")


def _head_examples(model_path: Path, is_bundle: bool, head: str, datasets: list[str], split_name: str, skip: bool):
    """The topic or entity examples to score: the whole files, or the model's own split part of
    the files it was trained on (matched by name)."""
    from .data import load_entity_file, load_head_splits, load_topic_file

    if split_name == "all":
        load = load_topic_file if head == "topic" else load_entity_file
        return [x for d in datasets for x in load(d, skip_bad_rows=skip)]
    if is_bundle:
        from pipeline.bundle import open_bundle

        manifest = open_bundle(model_path).manifest
        heads_data, seed = manifest.get("heads_data"), manifest["split_seed"]
    else:
        meta = json.loads((model_path / "finsent_checkpoint.json").read_text())
        heads_data, seed = meta["data"].get("heads"), meta["data"]["split_seed"]
    trained_on = list((heads_data or {}).get("files", {}).get(head, {}))
    wanted = {Path(d).name for d in datasets}
    if not trained_on or wanted - {Path(t).name for t in trained_on}:
        raise ValueError(
            f"{', '.join(sorted(wanted))} was not this model's {head} training data "
            f"({', '.join(Path(t).name for t in trained_on) or 'none'}); use --split all for unseen data"
        )
    by_name = {Path(d).name: d for d in datasets}
    sources = [by_name.get(Path(t).name, t) for t in trained_on]
    other = list((heads_data or {}).get("files", {}).get("entity" if head == "topic" else "topic", {}))
    other = [o for o in other if Path(o).exists()]
    topic_files, entity_files = (sources, other) if head == "topic" else (other, sources)
    splits = load_head_splits(topic_files, entity_files, seed, skip)
    part = (splits.topics if head == "topic" else splits.entities).part(split_name)
    return [x for x in part if x.source in wanted]


def _head_logits(model_path: Path, is_bundle: bool, variant: str, texts, spans, batch_size: int):
    """(topic logits / temperature, entity logits / temperature per text) as the worker scores them,
    or the checkpoint's; a single-head model's entity scores are its message scores."""
    if variant == "torch":
        from .inference import best_device, predict_heads
        from .model import SentimentClassifier

        model, tokenizer, meta = SentimentClassifier.load(model_path)
        if not model.heads:
            raise ValueError(f"{model_path} has no topic or entity head")
        _, topic, entity = predict_heads(model.to(best_device()), tokenizer, texts, spans, meta["max_length"])
        return topic, entity
    from pipeline.bundle import open_bundle
    from pipeline.classify import Classifier

    classifier = Classifier(open_bundle(model_path), variant=variant, batch_size=batch_size)
    inference = classifier.infer(texts, spans)
    # Log-probabilities rank and calibrate like the worker's probabilities.
    topics = None if inference.topics is None else np.log(np.clip(inference.topics, 1e-12, None))
    return topics, [np.log(np.clip(e, 1e-12, None)) for e in inference.entities]


def evaluate_head(
    model_path: Path,
    datasets: list[str],
    head: str,
    split_name: str = "test",
    variant: str = "int8",
    json_out: Path | None = None,
    batch_size: int = 32,
    skip_bad_rows: bool = False,
) -> dict:
    """The topic head on ``text,label`` topic files, or the entity head on entity files (SEntFiN
    or ``text,entity,label``): accuracy, macro-F1, confusion matrix; for entities also the
    headlines whose entities disagree, where one label per message cannot be right for all."""
    from pipeline.schemas import TOPICS

    from .data import LABEL_TO_ID, by_text

    model_path = Path(model_path)
    is_bundle = (model_path / "manifest.json").exists()
    if is_bundle == (variant == "torch"):
        raise ValueError(f"{model_path}: --variant torch takes a checkpoint, the ONNX variants a bundle")
    examples = _head_examples(model_path, is_bundle, head, datasets, split_name, skip_bad_rows)
    started = time.perf_counter()
    if head == "topic":
        texts, spans = [t.text for t in examples], [[] for _ in examples]
        topic, _ = _head_logits(model_path, is_bundle, variant, texts, spans, batch_size)
        if topic is None:
            raise ValueError(f"{model_path} has no topic head (a single-head bundle)")
        truth, logits, labels, extra = [TOPICS.index(t.topic) for t in examples], topic, TOPICS, {}
    else:
        grouped = by_text(examples)
        texts, spans = list(grouped), [[(m.start, m.end) for m in ms] for ms in grouped.values()]
        _, entity = _head_logits(model_path, is_bundle, variant, texts, spans, batch_size)
        truth = [LABEL_TO_ID[m.label] for ms in grouped.values() for m in ms]
        logits, labels = np.concatenate(entity), LABELS
        disagree = np.array([len({m.label for m in ms}) > 1 for ms in grouped.values() for _ in ms])
        predicted = logits.argmax(1)
        extra = {
            "headlines": len(grouped),
            "disagreeing": {
                "entities": int(disagree.sum()),
                "headlines": sum(len({m.label for m in ms}) > 1 for ms in grouped.values()),
                "accuracy": float((predicted[disagree] == np.asarray(truth)[disagree]).mean())
                if disagree.any()
                else None,
            },
        }
    elapsed = time.perf_counter() - started
    metrics = classification_metrics(truth, logits, labels=labels)
    result = {
        "model": str(model_path),
        "head": head,
        "variant": variant,
        "datasets": [str(d) for d in datasets],
        "split": split_name,
        "batch_size": batch_size,
        "throughput_msgs_per_s": len(texts) / elapsed if elapsed else 0.0,
        "metrics": {k: v for k, v in metrics.items() if k != "predictions"},
        **extra,
    }
    if json_out is not None:
        _write_reports(result, metrics["confusion_matrix"], Path(json_out), labels)
    result["predictions"] = metrics["predictions"]
    return result
