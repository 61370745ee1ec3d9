"""Distillation: the loss's pure arithmetic, and a soft-label file from a tiny teacher training a
student end to end (dev/test texts never scored, a mismatched split refused)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from training.config import TrainConfig
from training.data import load_datasets, split
from training.distill import SoftLabelError, distillation_loss, load_soft_labels, write_soft_labels
from training.train import train

NAN = float("nan")


def kl_t2(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    p = torch.softmax(teacher / temperature, dim=1)
    return (p * (p.log() - torch.log_softmax(student / temperature, dim=1))).sum(dim=1) * temperature**2


def test_loss_mixes_teacher_and_labels_per_row():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 0.0, 3.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [NAN, NAN, NAN]])
    labels = torch.tensor([0, -1, 2])  # row 1 unlabelled, row 2 not scored by the teacher
    ce = torch.nn.functional.cross_entropy(student, labels.clamp(min=0), reduction="none")
    soft = kl_t2(student[:2], teacher[:2], 2.0)
    expected = torch.stack([0.3 * soft[0] + 0.7 * ce[0], soft[1], ce[2]]).mean()
    assert torch.isclose(distillation_loss(student, labels, teacher, alpha=0.3, temperature=2.0), expected)
    # alpha 0 on labelled, scored rows is plain cross-entropy.
    both = torch.tensor([0, 1])
    assert torch.isclose(
        distillation_loss(student[:2], both, teacher[:2], 0.0, 2.0),
        torch.nn.functional.cross_entropy(student[:2], both),
    )


@settings(max_examples=60, deadline=None)
@given(
    student=arrays(np.float32, (4, 3), elements=st.floats(-20, 20, width=32)),
    temperature=st.floats(0.5, 5.0),
    alpha=st.floats(0.0, 1.0),
)
def test_loss_is_finite_non_negative_and_zero_when_student_matches_teacher(student, temperature, alpha):
    s = torch.from_numpy(student)
    unlabelled = torch.full((4,), -1)
    matched = distillation_loss(s, unlabelled, s.clone(), alpha, temperature)
    assert abs(float(matched)) < 1e-4
    mixed = distillation_loss(s, torch.tensor([0, 1, 2, -1]), s.flip(1), alpha, temperature)
    assert torch.isfinite(mixed) and float(mixed) >= -1e-6


def test_soft_labels_teach_a_student_and_never_score_held_out_text(tiny_run: Path, phrasebank: str, tmp_path: Path):
    parts = split(load_datasets([phrasebank]), seed=0)
    held_out = parts.test[0].text
    unlabelled = tmp_path / "topics.csv"
    with open(unlabelled, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerow([held_out, 3])  # a test sentence must never become training text
        for i in range(12):
            writer.writerow([f"Shares of company {i} moved after the quarterly report", 1])
    soft = tmp_path / "soft.jsonl.gz"
    meta = write_soft_labels(tiny_run / "best", soft, [unlabelled], log=lambda *_: None)
    assert meta["labelled_texts"] == len(parts.train) and meta["unlabelled_texts"] == 12
    _, logits = load_soft_labels(soft)
    assert held_out not in logits and not {e.text for e in parts.dev + parts.test} & set(logits)
    assert len(logits) == len(parts.train) + 12

    common = dict(
        datasets=[phrasebank],
        epochs=1,
        batch_size=16,
        max_examples=32,
        max_length=32,
        topic_datasets=[],
        entity_datasets=[],
    )
    best = train(TrainConfig(output=str(tmp_path / "student"), soft_labels=str(soft), **common))
    checkpoint = json.loads((best / "finsent_checkpoint.json").read_text())
    assert checkpoint["distillation"]["unlabelled_texts"] == 12
    assert checkpoint["data"]["sizes"]["train"] == 32
    history = json.loads((tmp_path / "student" / "history.json").read_text())
    assert history[0]["step"] == 3  # (32 labelled + 12 unlabelled) / 16, rounded up

    with pytest.raises(SoftLabelError, match="split seed 0"):
        train(TrainConfig(output=str(tmp_path / "other"), soft_labels=str(soft), split_seed=1, **common))


def test_a_malformed_soft_label_file_names_the_line(tmp_path: Path):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps({"meta": {}}) + "\n" + json.dumps({"text": "x", "logits": [1, 2]}) + "\n")
    with pytest.raises(SoftLabelError, match=r"bad.jsonl.gz:2: logits must be 3 finite numbers"):
        load_soft_labels(path)


def test_soft_label_files_record_data_paths_relative_to_the_repository(tmp_path: Path):
    from training.config import DATA_DIR
    from training.distill import portable

    inside = DATA_DIR / "financial_phrasebank" / "Sentences_50Agree.txt"
    assert portable(inside) == "data/financial_phrasebank/Sentences_50Agree.txt"
    assert portable(tmp_path / "x.csv") == str((tmp_path / "x.csv").resolve())


def test_the_train_command_passes_every_option_to_the_recipe_and_defaults_to_it(monkeypatch, tmp_path: Path):
    import dataclasses

    from typer.testing import CliRunner

    import training.train
    from pipeline.cli import app
    from training.config import default_datasets

    seen: list[TrainConfig] = []
    monkeypatch.setattr(training.train, "train", lambda config: seen.append(config) or tmp_path / "best")
    run = ["train", "-o", str(tmp_path / "run")]
    assert CliRunner().invoke(app, run).exit_code == 0
    assert seen[-1] == TrainConfig(output=str(tmp_path / "run"), datasets=default_datasets(), extra={"resume": False})
    given = ["--epochs", "5", "--seed", "7", "--distill-alpha", "0.5", "--soft-labels", "x.jsonl.gz", "--resume"]
    assert CliRunner().invoke(app, [*run, *given, "-d", "a.csv", "-d", "b.csv"]).exit_code == 0
    changed = {f.name for f in dataclasses.fields(TrainConfig) if getattr(seen[-1], f.name) != getattr(seen[0], f.name)}
    assert changed == {"epochs", "seed", "distill_alpha", "soft_labels", "datasets", "extra"}
    assert (seen[-1].epochs, seen[-1].seed, seen[-1].soft_labels) == (5, 7, "x.jsonl.gz")
    assert seen[-1].datasets == ["a.csv", "b.csv"] and seen[-1].extra == {"resume": True}
