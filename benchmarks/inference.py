"""Inference speed: torch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime INT8, same messages.

    python benchmarks/inference.py --checkpoint RUN/best --bundle BUNDLE \
        --data data/financial_phrasebank/Sentences_50Agree.txt

Messages/s (tokenisation included) and p99 latency per batch for batch sizes 1..64, each runtime
in the same process on the same texts, repeated; medians and ratios to torch eager are reported
(the machine is shared and noisy), with each runtime's label agreement with torch fp32.
``--device gpu`` (with onnxruntime-gpu) compares torch eager fp32/fp16 on CUDA with the ONNX
Runtime provider the worker would choose (CUDA, fp16 and fp32 models), bucketed by length as the
worker does and as one padded batch. Writes JSON and a PNG chart next to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.bundle import open_bundle
from pipeline.classify import LENGTH_SLACK, Classifier
from training.data import load_datasets, split
from training.model import SentimentClassifier


def time_batches(predict, texts: list[str], batch_size: int) -> tuple[float, float]:
    """(messages/s, p99 seconds per batch) over ``texts`` in batches."""
    durations = []
    started = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        t0 = time.perf_counter()
        predict(texts[i : i + batch_size])
        durations.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return len(texts) / total, float(np.percentile(durations, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--messages", type=int, default=512)
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    texts = [e.text for e in split(load_datasets([args.data]), seed=0).test][: args.messages]
    bundle = open_bundle(args.bundle)
    runtimes, environment = (gpu_runtimes if args.device == "gpu" else cpu_runtimes)(args, bundle)
    reference = runtimes["torch eager fp32"](texts).argmax(axis=1)
    agreement = {name: float((predict(texts).argmax(axis=1) == reference).mean()) for name, predict in runtimes.items()}
    print("label agreement with torch fp32:", {k: round(v, 4) for k, v in agreement.items()}, flush=True)

    results = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for name, predict in runtimes.items():
            predict(texts[:batch_size])  # warm-up
            runs = [time_batches(predict, texts, batch_size) for _ in range(args.repeats)]
            results.append(
                {
                    "runtime": name,
                    "batch_size": batch_size,
                    "agreement_with_torch": agreement[name],
                    "msgs_per_s": statistics.median(r[0] for r in runs),
                    "p99_batch_ms": statistics.median(r[1] for r in runs) * 1000,
                }
            )
            print(
                f"batch {batch_size:>3} {name:<17} {results[-1]['msgs_per_s']:8.1f} msg/s "
                f"p99 {results[-1]['p99_batch_ms']:7.1f} ms",
                flush=True,
            )
    for row in results:
        base = next(r for r in results if r["batch_size"] == row["batch_size"] and r["runtime"] == "torch eager fp32")
        row["ratio_vs_torch"] = row["msgs_per_s"] / base["msgs_per_s"]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "messages": len(texts),
                "threads": args.threads,
                "repeats": args.repeats,
                "device": args.device,
                **environment,
                "model_version": bundle.model_version,
                "results": results,
            },
            indent=2,
        )
    )
    where = environment.get("gpu") or f"{args.threads} CPU threads"
    plot(results, args.out.with_suffix(".png"), f"finsent inference ({where})")
    print("\n| batch | runtime | messages/s | p99 per batch (ms) | vs torch |\n|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['batch_size']} | {row['runtime']} | {row['msgs_per_s']:.0f} | {row['p99_batch_ms']:.1f} "
            f"| {row['ratio_vs_torch']:.1f}x |"
        )


def torch_runtime(args, device: str, half: bool = False):
    model, tokenizer, meta = SentimentClassifier.load(args.checkpoint)
    model.to(device)
    max_length = meta["max_length"]

    @torch.inference_mode()
    def predict(batch):  # what a tutorial does: tokenise as given, pad to the longest
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        with torch.autocast(device_type=device, dtype=torch.float16, enabled=half):
            return torch.softmax(model(**encoded).float(), dim=-1).cpu().numpy()

    return predict


def cpu_runtimes(args, bundle) -> tuple[dict, dict]:
    runtimes = {"torch eager fp32": torch_runtime(args, "cpu")}
    for variant in ("fp32", "int8"):
        classifier = Classifier(
            bundle, variant=variant, providers=["CPUExecutionProvider"], intra_op_threads=args.threads
        )
        runtimes[f"onnx {variant}"] = classifier.predict_proba  # sorts by length within the batch
    return runtimes, {"torch": torch.__version__, "onnxruntime": ort_version()}


def gpu_runtimes(args, bundle) -> tuple[dict, dict]:
    """The worker's own provider choice (no providers given), checked to be a GPU one."""
    runtimes = {"torch eager fp32": torch_runtime(args, "cuda"), "torch eager fp16": torch_runtime(args, "cuda", True)}
    providers = {}
    for variant in ("fp32", "fp16"):
        classifier = Classifier(bundle, variant=variant)  # one padded batch per call: the GPU default
        if classifier.provider == "CPUExecutionProvider":
            raise SystemExit(f"ONNX Runtime runs the {variant} model on the CPU here: no usable GPU provider")
        providers[variant] = classifier.provider
        runtimes[f"onnx {variant}"] = classifier.predict_proba
    bucketed = Classifier(bundle, variant="fp16", length_slack=LENGTH_SLACK)
    runtimes["onnx fp16, CPU-style length buckets"] = bucketed.predict_proba
    return runtimes, {
        "torch": torch.__version__,
        "onnxruntime": ort_version(),
        "providers": providers,
        "gpu": torch.cuda.get_device_name(0),
        "auto_variant": Classifier(bundle).variant,
    }


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def plot(results: list[dict], path: Path, title: str = "finsent inference") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for runtime in dict.fromkeys(r["runtime"] for r in results):
        rows = [r for r in results if r["runtime"] == runtime]
        ax.plot([r["batch_size"] for r in rows], [r["msgs_per_s"] for r in rows], marker="o", label=runtime)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("messages/s (median)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
