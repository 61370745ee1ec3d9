"""Logits of a torch checkpoint for a list of texts (dev metrics, export parity, evaluation)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.schemas import LABELS


def best_device() -> torch.device:
    """The GPU when there is one: training, soft labels and evaluation all choose the same way."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict_logits(
    model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """Logits in the order of ``texts``, computed on whatever device the model is on."""
    from pipeline.progress import Progress

    device = next(model.parameters()).device
    model.eval()
    out = []
    bar = Progress(len(texts), "scoring", unit="text", enabled=progress)
    # Sort by length so each batch pads little; restore the order at the end.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        encoded = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        logits = model(**encoded)
        if isinstance(logits, tuple):  # a three-head model: the message head's logits
            logits = logits[0]
        out.append(logits.float().cpu().numpy())
        bar.update(len(idx))
    bar.close()
    logits = np.concatenate(out) if out else np.zeros((0, len(LABELS)), dtype=np.float32)
    result = np.empty_like(logits)
    result[order] = logits
    return result


@torch.no_grad()
def predict_heads(
    model, tokenizer, texts: list[str], spans: list[list[tuple[int, int]]], max_length: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A three-head checkpoint's (message logits, topic logits, entity logits per text: one row
    per span) in the order of ``texts``."""
    from pipeline.classify import mention_masks

    device = next(model.parameters()).device
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    message, topic, entity = [None] * len(texts), [None] * len(texts), [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        encoded = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        offsets = encoded.pop("offset_mapping").tolist()
        mask = mention_masks(offsets, [spans[i] for i in idx], encoded["input_ids"].shape[1])
        out = model(**encoded.to(device), mention_mask=torch.from_numpy(mask).to(device))
        m, t, e = (x.float().cpu().numpy() for x in out)
        for row, i in enumerate(idx):
            message[i], topic[i], entity[i] = m[row], t[row], e[row, : len(spans[i])]
    width = len(LABELS)
    return (
        np.stack(message) if texts else np.zeros((0, width), np.float32),
        np.stack(topic) if texts else np.zeros((0, len(model.heads["topics"])), np.float32),
        entity,
    )
