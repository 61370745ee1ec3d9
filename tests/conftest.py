"""Shared test helpers: the labelled data the repository ships, tiny models trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import DATA_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "financial_phrasebank").is_dir():
        pytest.fail(f"labelled data missing from the checkout at {DATA_DIR}")
    return DATA_DIR


# An almost untrained head has near-tied logits, so INT8 flips some of them; trained models are
# held to the default 99 % (see the README's figures).
TINY_INT8_AGREEMENT = 0.8


@pytest.fixture(scope="session")
def phrasebank(data_dir: Path) -> str:
    return str(data_dir / "financial_phrasebank/Sentences_AllAgree.txt")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, phrasebank) -> Path:
    """A tiny fine-tuning run: 64 examples, 3 epochs of 4 steps (about 20 s on 2 cores). Class
    weights make it predict all three labels, which the alert tests need."""
    from training.config import TrainConfig
    from training.train import train

    output = tmp_path_factory.mktemp("tiny") / "run"
    train(
        TrainConfig(
            datasets=[phrasebank],
            output=str(output),
            epochs=3,
            batch_size=16,
            max_examples=64,
            learning_rate=3e-4,
            max_length=48,
            patience=3,
            class_weights=True,
            topic_datasets=[],  # message sentiment alone: the single-head bundles users already have
            entity_datasets=[],
        )
    )
    return output


@pytest.fixture(scope="session")
def tiny_heads_bundle(tmp_path_factory, phrasebank, data_dir: Path) -> Path:
    """A tiny three-head bundle (message, topic, entity): a few steps on capped data, so its
    scores mean little; tests of the heads' plumbing use it, the default model's card its quality."""
    from training.config import TrainConfig
    from training.train import train

    output = tmp_path_factory.mktemp("tiny-heads") / "run"
    train(
        TrainConfig(
            datasets=[phrasebank],
            output=str(output),
            epochs=1,
            batch_size=16,
            max_examples=48,
            learning_rate=3e-4,
            max_length=48,
            class_weights=True,
        )
    )
    return _export_tiny(output / "best", tmp_path_factory.mktemp("bundles") / "tiny-heads", 120, "tiny-heads-1")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory) -> Path:
    return _export_tiny(tiny_run / "best", tmp_path_factory.mktemp("bundles") / "tiny", 200, "tiny-1")


def _export_tiny(checkpoint: Path, path: Path, parity_limit: int, version: str) -> Path:
    """A tiny run's bundle, its INT8 gate loosened (a few steps leave near-tied logits)."""
    from training.export import export

    export(
        checkpoint,
        path,
        parity_limit=parity_limit,
        min_int8_agreement=TINY_INT8_AGREEMENT,
        max_int8_f1_drop=0.2,
        model_version=version,
        log=lambda *_: None,
    )
    return path
