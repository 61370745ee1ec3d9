"""What the topic and entity heads cost: bare INT8 messages/s of a three-head bundle against a
single-head one (the baseline), same texts, same process, alternating runs.

    python benchmarks/heads_speed.py --bundle models/default --baseline BASELINE_BUNDLE \\
        --data data/financial_phrasebank/Sentences_50Agree.txt

For each bundle and thread count (the worker's one inference thread on 2 cores, and all cores):
messages/s over --messages texts in batches of 32, tokenisation included. The three-head bundle
is timed as the worker runs it: company linking (the shipped dictionary) and one mention mask row
per linked company, in each of --variants (int8, and fp32: exact, and faster than a weight-only
INT8 model). Medians of --repeats runs; writes JSON next to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.bundle import open_bundle
from pipeline.classify import Classifier
from pipeline.config import DATA_DIR
from pipeline.enrich import CompanyDictionary, link_entities
from training.data import load_datasets

BATCH = 32


def run(classifier: Classifier, texts: list[str], dictionary: CompanyDictionary | None) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        batch = texts[start : start + BATCH]
        if dictionary is None:
            classifier.predict_proba(batch)
        else:
            spans = [[m.span for m in link_entities(t, [], dictionary) if m.span] for t in batch]
            classifier.infer(batch, spans)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--messages", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=("int8", "fp32"), default=["int8", "fp32"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/heads_speed.json"))
    args = parser.parse_args()
    texts = [e.text for e in load_datasets([str(args.data)]).examples][: args.messages]
    dictionary = CompanyDictionary.from_csv(DATA_DIR / "companies" / "dictionary.csv")
    linked = sum(bool(link_entities(t, [], dictionary)) for t in texts)
    results = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "texts": len(texts),
        "texts_naming_a_company": linked,
    }
    for threads in (1, 2):
        pair = {"baseline": Classifier(open_bundle(args.baseline), variant="int8", intra_op_threads=threads)}
        for variant in args.variants:
            name = f"three_heads_{variant}"
            pair[name] = Classifier(open_bundle(args.bundle), variant=variant, intra_op_threads=threads)
        for classifier in pair.values():
            run(classifier, texts[:128], None)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in pair}
        for _ in range(args.repeats):
            for name, classifier in pair.items():
                rates[name].append(run(classifier, texts, None if name == "baseline" else dictionary))
        medians = {name: statistics.median(r) for name, r in rates.items()}
        results[f"threads_{threads}"] = {
            "msgs_per_s": medians,
            "runs": rates,
            "ratio": {name: m / medians["baseline"] for name, m in medians.items() if name != "baseline"},
        }
        print(threads, json.dumps(results[f"threads_{threads}"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
