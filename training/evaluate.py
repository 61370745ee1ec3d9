"""Evaluation of a checkpoint or a model bundle: metrics, confusion matrix picture, report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pipeline.schemas import LABELS

from .metrics import classification_metrics


def plot_confusion_matrix(matrix: list[list[int]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_yticks(range(len(LABELS)), LABELS)
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
                color="white" if data[i, j] > data.max() / 2 else "black",
            )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_report(result: dict, png_name: str) -> str:
    m = result["metrics"]
    lines = [
        f"# finsent evaluation: {result['model']}",
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
    lines += ["", f"![confusion matrix]({png_name})", ""]
    return "\n".join(lines)


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
    from pipeline.bundle import open_bundle
    from pipeline.classify import Classifier

    from .data import LABEL_TO_ID, load_datasets, split

    model_path = Path(model_path)
    is_bundle = (model_path / "manifest.json").exists()
    if is_bundle:
        bundle = open_bundle(model_path)
        seed, max_length = bundle.manifest["split_seed"], bundle.max_length
        trained_on = [d["path"] for d in bundle.manifest["training_data"]]
    else:
        meta = json.loads((model_path / "finsent_checkpoint.json").read_text())
        seed, max_length = meta["data"]["split_seed"], meta["max_length"]
        trained_on = list(meta["data"]["files"])
    if split_name == "all":
        dataset = load_datasets(datasets, skip_bad_rows=skip_bad_rows)
        examples = dataset.examples
    else:
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
        examples = [e for e in split(dataset, seed=seed).part(split_name) if e.source in wanted]
    texts = [e.text for e in examples]
    y_true = [LABEL_TO_ID[e.label] for e in examples]

    started = time.perf_counter()
    if variant == "torch":
        from .inference import best_device, predict_logits
        from .model import SentimentClassifier

        if is_bundle:
            raise ValueError(f"{model_path} is a bundle (ONNX only): --variant torch needs the training checkpoint")
        model, tokenizer, _ = SentimentClassifier.load(model_path)
        logits = predict_logits(model.to(best_device()), tokenizer, texts, max_length, batch_size=batch_size)
    else:
        if not is_bundle:
            raise ValueError(f"{model_path} is a checkpoint: evaluate it with --variant torch, or export it first")
        classifier = Classifier(bundle, variant=variant, batch_size=batch_size)
        logits = classifier.logits(texts) / classifier.temperature  # the probabilities the worker writes
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
    }
    if json_out is not None:
        json_out = Path(json_out)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        png = json_out.with_suffix(".confusion.png")
        plot_confusion_matrix(metrics["confusion_matrix"], png, f"{model_path.name} ({variant}, {split_name})")
        json_out.write_text(json.dumps(result, indent=2))
        json_out.with_suffix(".md").write_text(markdown_report(result, png.name))
    result["predictions"] = metrics["predictions"]
    return result
