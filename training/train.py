"""Fine-tuning loop: AdamW, linear warm-up and decay, gradient clipping, early stopping on dev
macro-F1, fixed seeds, dynamic padding, resume mid-epoch, distillation from a teacher's soft labels
(training/distill.py); CUDA with mixed precision when present.

The output directory holds ``best/`` (the checkpoint with the best dev macro-F1, what ``export``
takes) and ``last/`` (model, optimiser and scheduler state after the latest epoch and every
``checkpoint_minutes`` within one, for ``--resume``).
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.bundle import sha256_of
from pipeline.progress import Progress
from pipeline.schemas import LABELS

from .config import TrainConfig
from .data import LABEL_TO_ID, Example, HeadSplits, by_text, head_eval_set, load_datasets, load_head_splits, split
from .distill import SoftLabelError, check_fits, distillation_loss, load_soft_labels
from .inference import best_device, predict_heads, predict_logits
from .metrics import classification_metrics
from .model import SentimentClassifier, resolve_base_model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def parameter_groups(model, config: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm; with ``layer_lr_decay`` < 1 the
    embeddings and lower encoder layers learn more slowly than the top ones and the head."""
    depth_count = getattr(model.encoder.config, "num_hidden_layers", 0) + 1
    no_decay = ("bias", "LayerNorm.weight", "layer_norm")
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        layer = re.search(r"\.layers?\.(\d+)\.", name)
        depth = 0 if "embeddings" in name else int(layer.group(1)) + 1 if layer else depth_count
        decay = 0.0 if any(k in name for k in no_decay) else config.weight_decay
        scale = config.layer_lr_decay ** (depth_count - depth)
        group = groups.setdefault(
            (decay, scale), {"params": [], "weight_decay": decay, "lr": config.learning_rate * scale}
        )
        group["params"].append(param)
    return list(groups.values())


@dataclass(frozen=True)
class TrainItem:
    """One text of the training stream with whatever labels it has (-1 / empty: none)."""

    text: str
    label: int = -1  # message sentiment
    topic: int = -1
    entities: tuple[tuple[int, int, int], ...] = ()  # (start, end, sentiment id) per mention


def batches(
    items: list[TrainItem],
    tokenizer,
    batch_size: int,
    max_length: int,
    shuffle: bool,
    generator=None,
    teacher: dict[str, np.ndarray] | None = None,
    heads: bool = False,
):
    """Tokenised batches padded to their own longest text (dynamic padding): (encoded, label ids
    (-1: unlabelled), teacher logits (NaN where the teacher did not score a text) or None, and with
    ``heads`` the topic ids, mention masks and entity label ids (-1: padding) or None)."""
    from pipeline.classify import mention_masks

    order = list(range(len(items)))
    if shuffle:
        order = torch.randperm(len(items), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        chunk = [items[i] for i in order[start : start + batch_size]]
        encoded = tokenizer(
            [e.text for e in chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_offsets_mapping=heads,
        )
        labels = torch.tensor([e.label for e in chunk])
        soft = None
        if teacher is not None:
            missing = np.full(len(LABELS), np.nan, dtype=np.float32)
            soft = torch.from_numpy(np.stack([teacher.get(e.text, missing) for e in chunk]))
        extra = None
        if heads:
            offsets = encoded.pop("offset_mapping").tolist()
            mask = mention_masks(offsets, [[m[:2] for m in e.entities] for e in chunk], encoded["input_ids"].shape[1])
            entity_labels = torch.full(mask.shape[:2], -1)
            for row, item in enumerate(chunk):
                for k, mention in enumerate(item.entities):
                    if mask[row, k].any():  # a mention truncated away teaches nothing
                        entity_labels[row, k] = mention[2]
            extra = {
                "topics": torch.tensor([e.topic for e in chunk]),
                "mention_mask": torch.from_numpy(mask),
                "entity_labels": entity_labels,
            }
        yield encoded, labels, soft, extra


def training_items(examples: list[Example], heads: HeadSplits | None, held_out: set[str]) -> list[TrainItem]:
    """The labelled training stream: message examples, topic texts and entity headlines (train
    parts), one item per text; ``held_out`` texts (any head's dev/test) never enter it."""
    from pipeline.schemas import TOPICS

    items: dict[str, dict] = {}
    for e in examples:
        items.setdefault(e.text, {})["label"] = LABEL_TO_ID[e.label]
    if heads and heads.topics:
        for t in heads.topics.train:
            items.setdefault(t.text, {})["topic"] = TOPICS.index(t.topic)
    if heads and heads.entities:
        for text, mentions in by_text(heads.entities.train).items():
            items.setdefault(text, {})["entities"] = tuple((m.start, m.end, LABEL_TO_ID[m.label]) for m in mentions)
    return [TrainItem(text, **fields) for text, fields in items.items() if text not in held_out]


def train(config: TrainConfig) -> Path:
    """Runs the fine-tuning and returns the path of the best checkpoint."""
    return Trainer(config).run()


class Trainer:
    """One training run: data and model set up in ``__init__``, then epochs until done, early
    stopping or ``max_steps``; ``last/`` carries what ``--resume`` needs to continue mid-epoch."""

    def __init__(self, config: TrainConfig):
        from transformers import AutoTokenizer

        self.config = config
        self.output = Path(config.output)
        self.last_dir, self.best_dir = self.output / "last", self.output / "best"
        self.base_model = resolve_base_model(config.base_model)
        seed_everything(config.seed)
        self.dataset = load_datasets(
            config.datasets,
            skip_bad_rows=config.skip_bad_rows,
            text_column=config.text_column,
            label_column=config.label_column,
        )
        self.parts = split(self.dataset, seed=config.split_seed)
        self.heads = None
        if config.topic_datasets or config.entity_datasets:
            self.heads = load_head_splits(
                config.topic_datasets, config.entity_datasets, config.split_seed, config.skip_bad_rows
            )
        self.examples, self.teacher, self.distillation = self._training_examples()
        self.device = best_device()
        self.use_amp = self.device.type == "cuda"
        resume_state = None
        if (self.last_dir / "trainer_state.pt").exists() and config.extra.get("resume"):
            self.model, self.tokenizer, _ = SentimentClassifier.load(self.last_dir)
            resume_state = torch.load(self.last_dir / "trainer_state.pt", map_location="cpu", weights_only=False)
        else:
            heads = {"entity_pooling": config.entity_pooling} if self.heads else None
            self.model = SentimentClassifier.from_base(self.base_model, heads=heads)
            self.tokenizer = AutoTokenizer.from_pretrained(self.base_model)
        self.model.to(self.device)
        self._optimisation()
        self.history: list[dict] = []
        self.start_epoch, self.step, self.best_f1, self.stale = 0, 0, -1.0, 0
        self.done_in_epoch: list[float] = []  # losses of the batches an interrupted epoch already trained on
        if resume_state:
            self._resume(resume_state)
        self.generator = torch.Generator().manual_seed(config.seed)
        for _ in range(self.start_epoch):  # same shuffles as an uninterrupted run
            torch.randperm(len(self.examples), generator=self.generator)
        self.meta = self._meta()

    def _training_examples(self) -> tuple[list[TrainItem], dict | None, dict]:
        """The labelled training stream (each source capped by ``max_examples``) plus, when
        distilling, the teacher's other texts; no head's dev or test text is in it."""
        config, parts, heads = self.config, self.parts, self.heads
        cap = config.max_examples
        held_out = {e.text for e in parts.dev + parts.test}
        if heads:
            for head_split in (heads.topics, heads.entities):
                if head_split is not None:
                    held_out |= {e.text for e in head_split.dev + head_split.test}
                    if cap:
                        head_split.train = head_split.train[:cap]
        items = training_items(parts.train[:cap] if cap else parts.train, heads, held_out)
        teacher, distillation = _soft_labels(config, self.dataset.files, parts)
        if teacher is not None:
            # Labelled texts left out by the cap stay out: the teacher scored the whole train split.
            in_stream = {e.text for e in items} | {e.text for e in parts.train}
            unlabelled = [TrainItem(t) for t in teacher if t not in in_stream and t not in held_out]
            items, distillation["unlabelled_texts"] = items + unlabelled, len(unlabelled)
        return items, teacher, distillation

    def _optimisation(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        config = self.config
        self.steps_per_epoch = (len(self.examples) + config.batch_size - 1) // config.batch_size
        total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps:
            total_steps = min(total_steps, config.max_steps)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, config), lr=config.learning_rate)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(config.warmup_ratio * total_steps), total_steps
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        weights = None
        if config.class_weights:
            ids = [e.label for e in self.examples if e.label >= 0]
            counts = np.bincount(ids, minlength=len(LABELS)).astype(float)
            weights = counts.sum() / (len(LABELS) * np.maximum(counts, 1))
            weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
        reduction = "none" if self.teacher is not None else "mean"  # distillation weighs each example itself
        self.loss_fn = torch.nn.CrossEntropyLoss(
            weight=weights, label_smoothing=config.label_smoothing, reduction=reduction, ignore_index=-1
        )
        self.head_loss = torch.nn.CrossEntropyLoss(ignore_index=-1)

    def _resume(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # States written before mid-epoch saves existed name the last finished epoch instead.
        self.start_epoch = state["next_epoch"] if "next_epoch" in state else state["epoch"] + 1
        self.step, self.done_in_epoch = state["step"], state.get("epoch_losses", [])
        self.best_f1, self.stale, self.history = state["best_f1"], state["stale"], state["history"]
        torch.set_rng_state(state["rng"])
        print(f"resuming at epoch {self.start_epoch + 1}, batch {len(self.done_in_epoch) + 1}")

    def _save_state(self, next_epoch: int, epoch_losses: list[float]) -> None:
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "next_epoch": next_epoch,
                "epoch_losses": epoch_losses,  # non-empty: next_epoch is under way, this many batches in
                "step": self.step,
                "best_f1": self.best_f1,
                "stale": self.stale,
                "history": self.history,
                "rng": torch.get_rng_state(),
            },
            self.last_dir / "trainer_state.pt",
        )

    def _meta(self) -> dict:
        config, dataset, parts = self.config, self.dataset, self.parts
        meta = {
            "base_model": self.base_model,
            "labels": list(LABELS),
            "max_length": config.max_length,
            "config": asdict(config),
            "data": {
                "files": dataset.files,
                "split_seed": config.split_seed,
                "test_size": 0.2,
                "dev_size": 0.1,
                "sizes": {
                    "train": len(self.examples) - self.distillation.get("unlabelled_texts", 0),
                    "dev": len(parts.dev),
                    "test": len(parts.test),
                },
                "duplicates_removed": dataset.duplicates_removed,
                "conflicting_removed": dataset.conflicting_removed,
                "bad_rows": dict(dataset.bad_rows),
            },
        }
        if self.heads:
            meta["data"]["heads"] = {
                "files": self.heads.files,
                "bad_rows": dict(self.heads.bad_rows),
                "sizes": {
                    name: {part: len(getattr(s, part)) for part in ("train", "dev", "test")}
                    for name, s in (("topic", self.heads.topics), ("entity", self.heads.entities))
                    if s is not None
                },
                "split": "by group: near-copy tweets (links, case and spacing aside) and headlines",
            }
        if self.distillation:
            meta["distillation"] = self.distillation
        return meta

    def run(self) -> Path:
        config = self.config
        for epoch in range(self.start_epoch, config.epochs):
            started = time.perf_counter()
            losses = self._train_epoch(epoch)
            if self._end_epoch(epoch, losses, time.perf_counter() - started):
                break
            if config.max_steps and self.step >= config.max_steps:
                break
        (self.output / "history.json").write_text(json.dumps(self.history, indent=2))
        return self.best_dir

    def _train_epoch(self, epoch: int) -> list[float]:
        config = self.config
        self.model.train()
        bar = Progress(self.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", unit="batch")
        losses, self.done_in_epoch = self.done_in_epoch, []
        bar.update(len(losses))
        saved_at = time.monotonic()
        batched = batches(
            self.examples,
            self.tokenizer,
            config.batch_size,
            config.max_length,
            True,
            self.generator,
            self.teacher,
            heads=self.heads is not None,
        )
        for index, (encoded, labels, soft, extra) in enumerate(batched):
            if index < len(losses):  # trained on before the interruption
                continue
            losses.append(self._train_step(encoded, labels, soft, extra))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            bar.update()
            if config.max_steps and self.step >= config.max_steps:
                break
            if time.monotonic() - saved_at > config.checkpoint_minutes * 60:
                self.model.save(self.last_dir, self.tokenizer, {**self.meta, "epoch": epoch})
                self._save_state(epoch, losses)
                saved_at = time.monotonic()
        bar.close()
        return losses

    def _train_step(self, encoded, labels: torch.Tensor, soft: torch.Tensor | None, extra: dict | None) -> float:
        config, device = self.config, self.device
        encoded, labels = encoded.to(device), labels.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=self.use_amp):
            if extra is None:
                logits = self.model(**encoded).float()
            else:
                extra = {k: v.to(device) for k, v in extra.items()}
                logits, topic_logits, entity_logits = self.model(**encoded, mention_mask=extra["mention_mask"])
                logits = logits.float()
        if soft is not None:
            loss = distillation_loss(
                logits, labels, soft.to(device), config.distill_alpha, config.distill_temperature, self.loss_fn
            )
        elif (labels >= 0).any():
            loss = self.loss_fn(logits, labels)
        else:
            loss = logits.sum() * 0.0
        if extra is not None:
            if (extra["topics"] >= 0).any():
                loss = loss + config.topic_weight * self.head_loss(topic_logits.float(), extra["topics"])
            entity_labels = extra["entity_labels"].reshape(-1)
            if (entity_labels >= 0).any():
                flat = entity_logits.float().reshape(-1, entity_logits.shape[-1])
                loss = loss + config.entity_weight * self.head_loss(flat, entity_labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return loss.item()

    def _end_epoch(self, epoch: int, losses: list[float], seconds: float) -> bool:
        """Scores dev, saves ``best/`` when it improved and ``last/`` always; True to stop early."""
        dev_texts = [e.text for e in self.parts.dev]
        dev_logits = predict_logits(self.model, self.tokenizer, dev_texts, self.config.max_length)
        dev = classification_metrics([LABEL_TO_ID[e.label] for e in self.parts.dev], dev_logits)
        heads_dev = head_metrics(self.model, self.tokenizer, self.heads, "dev", self.config.max_length)
        if heads_dev:
            dev["heads"] = heads_dev
            # Selection weighs the three heads alike.
            dev["selection_score"] = float(np.mean([dev["macro_f1"]] + [m["macro_f1"] for m in heads_dev.values()]))
        record = {
            "epoch": epoch + 1,
            "step": self.step,
            "train_loss": float(np.mean(losses)) if losses else None,
            "losses": [round(x, 5) for x in losses],
            "dev_accuracy": dev["accuracy"],
            "dev_macro_f1": dev["macro_f1"],
            **{f"dev_{name}_{k}": m[k] for name, m in heads_dev.items() for k in ("accuracy", "macro_f1")},
            "seconds": round(seconds, 1),
        }
        self.history.append(record)
        print(
            f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, dev accuracy {dev['accuracy']:.4f}, "
            f"dev macro-F1 {dev['macro_f1']:.4f}"
            + "".join(f", {name} dev accuracy {m['accuracy']:.4f}" for name, m in heads_dev.items())
            + f" ({record['seconds']} s)"
        )
        self.meta["history"] = self.history
        score = dev.get("selection_score", dev["macro_f1"])
        if score > self.best_f1:
            self.best_f1, self.stale = score, 0
            self.model.save(self.best_dir, self.tokenizer, {**self.meta, "epoch": epoch + 1, "dev_metrics": dev})
        else:
            self.stale += 1
        self.model.save(self.last_dir, self.tokenizer, {**self.meta, "epoch": epoch + 1})
        self._save_state(epoch + 1, [])
        if self.stale >= self.config.patience:
            print(f"early stopping: dev macro-F1 has not improved for {self.stale} epochs")
            return True
        return False


def head_metrics(model, tokenizer, heads: HeadSplits | None, part: str, max_length: int) -> dict:
    """The topic and entity heads' metrics on a part of their splits ({} for a single-head model);
    entity metrics over every labelled mention."""
    from pipeline.schemas import TOPICS

    if not heads or not model.heads:
        return {}
    texts, spans, topic_ids, entity_ids = head_eval_set(heads, part)
    _, topic_logits, entity_logits = predict_heads(model, tokenizer, texts, spans, max_length)
    out = {}
    if topic_ids:
        out["topic"] = classification_metrics(topic_ids, topic_logits[: len(topic_ids)], labels=TOPICS)
    if entity_ids:
        out["entity"] = classification_metrics(entity_ids, np.concatenate(entity_logits[len(topic_ids) :]))
    return out


def _soft_labels(config: TrainConfig, files: dict[str, str], parts) -> tuple[dict | None, dict]:
    """The teacher's logits by text, and what the checkpoint records about them."""
    if not config.soft_labels:
        return None, {}
    soft_meta, teacher = load_soft_labels(config.soft_labels)
    check_fits(soft_meta, files, config.split_seed, config.soft_labels)
    held_out = {e.text for e in parts.dev + parts.test}
    scored_held_out = sum(text in teacher for text in held_out)
    if scored_held_out:
        raise SoftLabelError(f"{config.soft_labels}: scores {scored_held_out} dev/test texts; regenerate it")
    return teacher, {
        "soft_labels": config.soft_labels,
        "sha256": sha256_of(Path(config.soft_labels)),
        "teacher_base_model": soft_meta["teacher_base_model"],
        "teacher_dev_metrics": soft_meta["teacher_dev_metrics"],
        "texts": len(teacher),
        "alpha": config.distill_alpha,
        "temperature": config.distill_temperature,
    }
