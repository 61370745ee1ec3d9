"""The training recipe's settings, one source of defaults for the code and the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
# The default recipe's data: news sentences and finance tweets, so the model reads both kinds of
# text the monitor sees (split per source and label, see training/data.py).
DEFAULT_DATASETS = (
    "financial_phrasebank/Sentences_50Agree.txt",
    "twitter_financial_news_sentiment/sent_train.csv",
)


# Unlabelled finance text for distillation and domain-adaptive pretraining.
DEFAULT_UNLABELLED = (DATA_DIR / "twitter_financial_news_topic" / "topic_train.csv",)


# The topic and entity heads' data (training/data.py: load_topic_file, load_entity_file).
DEFAULT_TOPIC_DATASETS = ("twitter_financial_news_topic/topic_train.csv",)
DEFAULT_ENTITY_DATASETS = ("sentfin/SEntFiN-dev.csv",)


def default_datasets(data_dir: Path | str = DATA_DIR) -> list[str]:
    return [str(Path(data_dir) / name) for name in DEFAULT_DATASETS]


def default_topic_datasets(data_dir: Path | str = DATA_DIR) -> list[str]:
    return [str(Path(data_dir) / name) for name in DEFAULT_TOPIC_DATASETS]


def default_entity_datasets(data_dir: Path | str = DATA_DIR) -> list[str]:
    return [str(Path(data_dir) / name) for name in DEFAULT_ENTITY_DATASETS]


@dataclass
class TrainConfig:
    output: str
    datasets: list[str] = field(default_factory=default_datasets)
    # Both empty: message sentiment alone (a single-head model); otherwise all three heads.
    topic_datasets: list[str] = field(default_factory=default_topic_datasets)
    entity_datasets: list[str] = field(default_factory=default_entity_datasets)
    entity_pooling: str = "mention"  # training/model.py ENTITY_POOLING (benchmarks/entity_pooling.py)
    topic_weight: float = 1.0  # each head's share of the loss, beside the message head's 1
    entity_weight: float = 1.0
    base_model: str = ""
    epochs: int = 2
    seed: int = 0  # weight initialisation and data order
    split_seed: int = 0  # train/dev/test split: fixed, so runs with other seeds are scored on the same test set
    max_length: int = 64
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    class_weights: bool = False
    label_smoothing: float = 0.0
    layer_lr_decay: float = 1.0  # each encoder layer below the top learns at this times the rate above it
    patience: int = 2
    max_examples: int | None = None  # cap the training set (smoke runs, tests)
    max_steps: int | None = None  # stop after this many optimiser steps in total
    skip_bad_rows: bool = False
    soft_labels: str | None = None  # a teacher's soft-label file (finsent soft-labels): distil from it
    distill_alpha: float = 0.8  # share of the teacher's term in a labelled example's loss (chosen on dev)
    distill_temperature: float = 1.0
    checkpoint_minutes: float = (
        15.0  # also save last/ this often mid-epoch, so --resume loses little of a long CPU epoch
    )
    text_column: str = "text"  # for generic CSV/JSONL files
    label_column: str = "label"
    extra: dict = field(default_factory=dict)


@dataclass
class PretrainConfig:
    """Domain-adaptive pretraining (training/pretrain.py)."""

    output: str
    base_model: str = ""
    datasets: list[str] = field(default_factory=default_datasets)
    unlabelled: list[str] = field(default_factory=lambda: [str(p) for p in DEFAULT_UNLABELLED])
    split_seed: int = 0  # the split `finsent train` will use, so its dev and test texts stay unseen
    epochs: int = 1
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    mask_probability: float = 0.15
    # The MLM head starts untrained: fit it alone first, so its noise does not reach the encoder.
    head_warmup_steps: int = 100
    seed: int = 0
    max_steps: int | None = None
