"""The training recipe's settings, one source of defaults for the code and the command line."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    datasets: list[str]
    output: str
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
    text_column: str = "text"  # for generic CSV/JSONL files
    label_column: str = "label"
    extra: dict = field(default_factory=dict)
