"""Domain-adaptive pretraining: which texts it reads, what it leaves untouched, what it writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from training.config import PretrainConfig
from training.data import load_datasets, split
from training.pretrain import META, adaptation_texts, pretrain


def _unlabelled(tmp_path: Path, texts: list[str]) -> str:
    path = tmp_path / "unlabelled.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([t, 0] for t in texts)
    return str(path)


def test_adaptation_reads_the_training_split_and_unlabelled_text_but_never_dev_or_test(phrasebank, tmp_path):
    parts = split(load_datasets([phrasebank]), seed=0)
    leaked = parts.test[0].text
    unlabelled = _unlabelled(tmp_path, ["$ACME beats estimates", leaked, "$ACME beats estimates"])
    texts, dev = adaptation_texts(PretrainConfig(output="x", datasets=[phrasebank], unlabelled=[unlabelled]))
    held_out = {e.text for e in parts.dev} | {e.text for e in parts.test}
    assert not held_out & set(texts)
    assert set(texts) == {e.text for e in parts.train} | {"$ACME beats estimates"}
    assert len(texts) == len(set(texts))
    assert dev == [e.text for e in parts.dev]


def _encoder_weights(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    return {k: v.clone() for k, v in AutoModel.from_pretrained(path).state_dict().items()}


@pytest.mark.parametrize("steps", [2, 6])
def test_the_encoder_learns_only_after_the_head_warm_up_and_loads_as_a_base_model(phrasebank, tmp_path, steps):
    from training.model import SentimentClassifier, default_base_model

    config = PretrainConfig(
        output=str(tmp_path / "adapted"),
        datasets=[phrasebank],
        unlabelled=[_unlabelled(tmp_path, [f"$T{i} shares fall after guidance cut" for i in range(20)])],
        batch_size=8,
        learning_rate=1e-3,
        head_warmup_steps=2,
        max_steps=steps,
    )
    output = pretrain(config, log=lambda *_: None)
    meta = json.loads((output / META).read_text())
    loss = meta["dev_masked_lm_loss"]
    assert loss["after"] < loss["before"]  # the untrained head alone makes the first figure poor
    assert meta["data"]["texts"] > 20 and meta["config"]["max_steps"] == steps

    before, after = _encoder_weights(default_base_model()), _encoder_weights(output)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert (changed == []) if steps <= config.head_warmup_steps else len(changed) > len(before) // 2
    assert SentimentClassifier.from_base(str(output)).encoder.config.hidden_size == 384
