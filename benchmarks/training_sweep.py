"""Training sweep: which recipe gives the best model, judged over several seeds on one fixed split.

    python benchmarks/training_sweep.py --dataset data/financial_phrasebank/Sentences_50Agree.txt \\
        --output /tmp/sweep --seeds 0 1 2 --workers 1

Runs ``finsent train`` (in-process) for every recipe in RECIPES and every seed, always on the
split of ``--split-seed`` so test figures are comparable, scores each best checkpoint (chosen by
dev macro-F1, as ``finsent train`` does) on the test split with torch, and writes one JSON line per
run plus a table of means and standard deviations ranked by mean *dev* macro-F1 (ranking by test
would be choosing on the test set). On a GPU several runs share the device (``--workers``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# Each recipe changes TrainConfig fields from the defaults (lr 1e-4, 2 epochs, batch 32, max length 64).
RECIPES: dict[str, dict] = {
    "default": {},
    "epochs3": {"epochs": 3},
    "epochs4": {"epochs": 4},
    "lr5e-5_epochs3": {"learning_rate": 5e-5, "epochs": 3},
    "lr5e-5_epochs4": {"learning_rate": 5e-5, "epochs": 4},
    "lr2e-4": {"learning_rate": 2e-4},
    "lr2e-4_epochs3": {"learning_rate": 2e-4, "epochs": 3},
    "batch16": {"batch_size": 16},
    "batch16_epochs3": {"batch_size": 16, "epochs": 3},
    "batch16_lr5e-5_epochs3": {"batch_size": 16, "learning_rate": 5e-5, "epochs": 3},
    "class_weights": {"class_weights": True},
    "class_weights_epochs3": {"class_weights": True, "epochs": 3},
    "smoothing0.1": {"label_smoothing": 0.1},
    "smoothing0.1_epochs3": {"label_smoothing": 0.1, "epochs": 3},
    "llrd0.8_lr2e-4_epochs3": {"layer_lr_decay": 0.8, "learning_rate": 2e-4, "epochs": 3},
    "llrd0.8_epochs3": {"layer_lr_decay": 0.8, "epochs": 3},
    "llrd0.9_lr1.5e-4_epochs3": {"layer_lr_decay": 0.9, "learning_rate": 1.5e-4, "epochs": 3},
    "llrd0.7_lr3e-4_epochs3": {"layer_lr_decay": 0.7, "learning_rate": 3e-4, "epochs": 3},
    "llrd0.8_lr2e-4_epochs4_smoothing0.1": {
        "layer_lr_decay": 0.8,
        "learning_rate": 2e-4,
        "epochs": 4,
        "label_smoothing": 0.1,
    },
    "maxlen128": {"max_length": 128},
    "batch16_smoothing0.1_epochs3": {"batch_size": 16, "label_smoothing": 0.1, "epochs": 3},
    "batch16_lr5e-5_epochs5": {"batch_size": 16, "learning_rate": 5e-5, "epochs": 5},
    "weight_decay0.1_epochs3": {"weight_decay": 0.1, "epochs": 3},
    "warmup0.2_lr2e-4_epochs3": {"warmup_ratio": 0.2, "learning_rate": 2e-4, "epochs": 3},
}


def run_one(recipe: str, seed: int, args: dict) -> dict:
    """One training run and its test score (in a worker process)."""
    import torch

    torch.set_num_threads(args["threads"])
    from training.config import TrainConfig
    from training.data import LABEL_TO_ID, load_datasets, split
    from training.inference import best_device, predict_logits
    from training.metrics import classification_metrics
    from training.model import SentimentClassifier
    from training.train import train

    output = Path(args["output"]) / "runs" / f"{recipe}-s{seed}"
    config = TrainConfig(
        datasets=args["datasets"],
        output=str(output),
        base_model=args["base_model"],
        seed=seed,
        split_seed=args["split_seed"],
        max_steps=args["max_steps"],
        **RECIPES[recipe],
    )
    started = time.perf_counter()
    best = train(config)
    seconds = time.perf_counter() - started
    model, tokenizer, meta = SentimentClassifier.load(best)
    device = best_device()
    model.to(device)
    test = split(load_datasets(args["datasets"]), seed=args["split_seed"]).test
    logits = predict_logits(model, tokenizer, [e.text for e in test], config.max_length)
    metrics = classification_metrics([LABEL_TO_ID[e.label] for e in test], logits)
    row = {
        "recipe": recipe,
        "seed": seed,
        "config": RECIPES[recipe],
        "best_epoch": meta["epoch"],
        "dev_macro_f1": meta["dev_metrics"]["macro_f1"],
        "dev_accuracy": meta["dev_metrics"]["accuracy"],
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_examples": len(test),
        "train_seconds": round(seconds, 1),
        "device": device.type,
    }
    if output.name not in args["keep"] and "all" not in args["keep"]:
        shutil.rmtree(output, ignore_errors=True)
    return row


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        entry = {"recipe": recipe, "runs": len(mine)}
        for key in ("dev_macro_f1", "test_accuracy", "test_macro_f1"):
            values = [r[key] for r in mine]
            entry[key] = statistics.mean(values)
            entry[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry["test_accuracy_min"] = min(r["test_accuracy"] for r in mine)
        table.append(entry)
    return sorted(table, key=lambda e: -e["dev_macro_f1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--base-model", default="")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (several share one GPU)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument(
        "--keep",
        nargs="*",
        default=[],
        metavar="RECIPE-sSEED",
        help="runs whose checkpoints to keep (e.g. default-s0; 'all' keeps every run's)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="cut every run short (smoke test)")
    args = parser.parse_args()

    args.output.mkdir(parents=True, exist_ok=True)
    shared = {
        "datasets": [str(d) for d in args.dataset],
        "output": str(args.output),
        "base_model": args.base_model,
        "split_seed": args.split_seed,
        "threads": args.threads,
        "keep": args.keep,
        "max_steps": args.max_steps,
    }
    lines = args.output / "runs.jsonl"
    rows = [json.loads(line) for line in lines.read_text().splitlines()] if lines.exists() else []
    done = {(r["recipe"], r["seed"]) for r in rows}
    jobs = [(recipe, seed) for seed in args.seeds for recipe in args.recipes if (recipe, seed) not in done]
    print(f"{len(jobs)} runs to do ({len(done)} already in {lines})", flush=True)
    import multiprocessing

    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, recipe, seed, shared): (recipe, seed) for recipe, seed in jobs}
        for future in as_completed(futures):
            try:
                row = future.result()
            except Exception as exc:  # one broken recipe must not lose the others' results
                print(f"run {futures[future]} failed: {exc!r}", flush=True)
                continue
            rows.append(row)
            with open(lines, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                f"{row['recipe']} seed {row['seed']}: dev F1 {row['dev_macro_f1']:.4f} test acc "
                f"{row['test_accuracy']:.4f} F1 {row['test_macro_f1']:.4f} ({row['train_seconds']} s)",
                flush=True,
            )
            write_summary(rows, args.output)  # after every run: a sweep cut short still leaves its table
    print(write_summary(rows, args.output))


def write_summary(rows: list[dict], output: Path) -> str:
    table = summarise(rows)
    (output / "summary.json").write_text(json.dumps(table, indent=2))
    text = [
        "| recipe | runs | dev macro-F1 | test accuracy | test macro-F1 | worst test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for e in table:
        text.append(
            f"| {e['recipe']} | {e['runs']} | {e['dev_macro_f1']:.3f} ± {e['dev_macro_f1_sd']:.3f} "
            f"| {e['test_accuracy']:.3f} ± {e['test_accuracy_sd']:.3f} "
            f"| {e['test_macro_f1']:.3f} ± {e['test_macro_f1_sd']:.3f} | {e['test_accuracy_min']:.3f} |"
        )
    (output / "summary.md").write_text("\n".join(text) + "\n")
    return "\n".join(text)


if __name__ == "__main__":
    main()
