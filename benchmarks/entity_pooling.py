"""How the entity head reads a mention: its pooled tokens beside the whole text's pooled vector
("mention+text", the default) or alone ("mention"), judged on the entity dev split.

    python benchmarks/entity_pooling.py [--max-examples 3000] [--epochs 1]

Each option trains the same short recipe (message sentiment and entity data, no topics, no
teacher; every source capped at --max-examples) from the same seed and split, then scores the
entity head on the entity dev split: accuracy, macro-F1, and accuracy on the dev headlines whose
entities disagree. The message head's label copied to every entity of the same dev texts is the
baseline a one-label-per-message model gives. Writes benchmarks/results/entity_pooling.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TrainConfig, default_entity_datasets
from training.data import LABEL_TO_ID, by_text, load_head_splits
from training.inference import predict_heads
from training.model import ENTITY_POOLING, SentimentClassifier
from training.train import train


def score(checkpoint: Path) -> dict:
    model, tokenizer, meta = SentimentClassifier.load(checkpoint)
    heads = load_head_splits([], default_entity_datasets(), meta["data"]["split_seed"])
    grouped = by_text(heads.entities.dev)
    texts, spans = list(grouped), [[(m.start, m.end) for m in ms] for ms in grouped.values()]
    message, _, entity = predict_heads(model, tokenizer, texts, spans, meta["max_length"])
    truth = np.array([LABEL_TO_ID[m.label] for ms in grouped.values() for m in ms])
    predicted = np.concatenate([e.argmax(1) for e in entity])
    copied = np.concatenate([np.full(len(ms), message[i].argmax()) for i, ms in enumerate(grouped.values())])
    disagree = np.array([len({m.label for m in ms}) > 1 for ms in grouped.values() for _ in ms])
    from sklearn.metrics import f1_score

    return {
        "dev_entities": int(len(truth)),
        "accuracy": float((predicted == truth).mean()),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "accuracy_where_entities_disagree": float((predicted[disagree] == truth[disagree]).mean()),
        "disagreeing_entities": int(disagree.sum()),
        "message_label_copied": {
            "accuracy": float((copied == truth).mean()),
            "accuracy_where_entities_disagree": float((copied[disagree] == truth[disagree]).mean()),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/entity_pooling.json"))
    args = parser.parse_args()
    results = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "max_examples": args.max_examples}
    work = Path(tempfile.mkdtemp(prefix="finsent-pooling-"))
    for pooling in ENTITY_POOLING:
        started = time.perf_counter()
        config = TrainConfig(
            output=str(work / pooling.replace("+", "_")),
            topic_datasets=[],
            entity_pooling=pooling,
            epochs=args.epochs,
            max_examples=args.max_examples,
        )
        best = train(config)
        results[pooling] = {**score(best), "train_seconds": round(time.perf_counter() - started)}
        print(pooling, json.dumps(results[pooling]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
