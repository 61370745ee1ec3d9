"""INT8 recipes side by side on one trained checkpoint: label agreement with fp32, macro-F1 drop
and speed, each measured in the same run against the fp32 model.

    python benchmarks/int8_recipes.py --checkpoint RUN/best --out benchmarks/results/int8_recipes.json

For each recipe of ``training.export.INT8_RECIPES`` (the ones export tries, in order) and
``DYNAMIC_INT8_RECIPES`` (measured for comparison only): agreement and macro-F1 on the checkpoint's
test split, messages/s in batches of 32 on the worker's inference threads (tokenisation included, median
of ``--repeats``), and how far a text's scores move when its batch-mates change (0 for the
recipes export tries). Export keeps the first recipe of its list that passes parity.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.bundle import VARIANT_FILES, Bundle, write_manifest
from pipeline.classify import Classifier, worker_inference_threads
from pipeline.schemas import LABELS
from training.data import LABEL_TO_ID, load_datasets, split
from training.export import (
    DYNAMIC_INT8_RECIPES,
    INT8_RECIPES,
    ONNX_INPUTS,
    _calibration_batches,
    _export_onnx,
    _optimise,
    _quantise,
)
from training.metrics import classification_metrics
from training.model import SentimentClassifier


def speed(classifier: Classifier, texts: list[str], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(texts), 32):
            classifier.predict_proba(texts[i : i + 32])
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def batch_dependence(classifier: Classifier, texts: list[str]) -> float:
    """The largest change of a text's probabilities between two different batchings."""
    first = classifier.predict_proba(texts)
    shuffled = list(reversed(texts))
    second = classifier.predict_proba(shuffled)[::-1]
    return float(np.abs(first - second).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_recipes.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speed-texts", type=int, default=640)
    parser.add_argument(
        "--threads", type=int, default=worker_inference_threads(), help="inference threads (default: the worker's)"
    )
    recipes = INT8_RECIPES + DYNAMIC_INT8_RECIPES
    parser.add_argument("--recipes", nargs="+", choices=recipes, default=list(recipes))
    args = parser.parse_args()

    model, tokenizer, meta = SentimentClassifier.load(args.checkpoint)
    parts = split(load_datasets(list(meta["data"]["files"])), seed=meta["data"]["split_seed"])
    texts = [e.text for e in parts.test]
    y_true = [LABEL_TO_ID[e.label] for e in parts.test]
    rng = np.random.default_rng(0)
    picked = rng.choice(len(parts.train), size=min(256, len(parts.train)), replace=False)
    calibration_texts = [parts.train[int(i)].text for i in picked]

    work = Path(tempfile.mkdtemp(prefix="int8-recipes-"))
    try:
        raw = work / "raw.onnx"
        names = _export_onnx(model, tokenizer, raw, 17)
        _optimise(raw, model.encoder.config, work / VARIANT_FILES["fp32"], work / VARIANT_FILES["fp16"])
        (work / "labels.json").write_text(json.dumps(list(LABELS)))
        tokenizer.save_pretrained(work)
        manifest = write_manifest(
            work,
            {
                "model_version": "bench",
                "labels": list(LABELS),
                "max_length": meta["max_length"],
                "onnx_inputs": list(ONNX_INPUTS),
            },
        )
        bundle = Bundle(work, manifest)
        fp32 = Classifier(bundle, variant="fp32", providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
        fp32_logits = fp32.logits(texts)
        fp32_f1 = classification_metrics(y_true, fp32_logits)["macro_f1"]
        speed_texts = (texts * 10)[: args.speed_texts]
        rows = [{"recipe": "fp32", "msg_per_s": speed(fp32, speed_texts, args.repeats), "macro_f1": fp32_f1}]
        print(f"fp32: {rows[0]['msg_per_s']:.0f} msg/s, macro-F1 {fp32_f1:.4f}", flush=True)

        def calibration():
            return _calibration_batches(tokenizer, calibration_texts, meta["max_length"], names)

        for recipe in args.recipes:
            started = time.perf_counter()
            _quantise(work / VARIANT_FILES["fp32"], raw, work / VARIANT_FILES["int8"], recipe, calibration)
            quantise_s = time.perf_counter() - started
            int8 = Classifier(bundle, variant="int8", providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
            logits = int8.logits(texts)
            f1 = classification_metrics(y_true, logits)["macro_f1"]
            row = {
                "recipe": recipe,
                "agreement": float((logits.argmax(1) == fp32_logits.argmax(1)).mean()),
                "macro_f1": f1,
                "macro_f1_drop": fp32_f1 - f1,
                "msg_per_s": speed(int8, speed_texts, args.repeats),
                "batch_dependence": batch_dependence(int8, texts[:256]),
                "quantise_s": quantise_s,
            }
            row["speed_vs_fp32"] = row["msg_per_s"] / rows[0]["msg_per_s"]
            rows.append(row)
            print(
                f"{recipe}: agreement {row['agreement']:.2%}, macro-F1 drop {row['macro_f1_drop']:+.4f}, "
                f"{row['msg_per_s']:.0f} msg/s ({row['speed_vs_fp32']:.2f}x fp32), "
                f"batch dependence {row['batch_dependence']:.1e}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": f"python benchmarks/int8_recipes.py --checkpoint {args.checkpoint}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores",
        "inference_threads": args.threads,
        "test_examples": len(texts),
        "training_data": [Path(p).name for p in meta["data"]["files"]],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
