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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.bundle import sha256_of
from pipeline.progress import Progress
from pipeline.schemas import LABELS

from .config import TrainConfig
from .data import LABEL_TO_ID, Example, load_datasets, split
from .distill import SoftLabelError, check_fits, distillation_loss, load_soft_labels
from .inference import predict_logits
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


def batches(
    examples: list[Example],
    tokenizer,
    batch_size: int,
    max_length: int,
    shuffle: bool,
    generator=None,
    teacher: dict[str, np.ndarray] | None = None,
):
    """Tokenised batches padded to their own longest text (dynamic padding): (encoded, label ids
    (-1: unlabelled), teacher logits (NaN where the teacher did not score a text) or None)."""
    order = list(range(len(examples)))
    if shuffle:
        order = torch.randperm(len(examples), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        encoded = tokenizer(
            [e.text for e in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        labels = torch.tensor([LABEL_TO_ID.get(e.label, -1) for e in chunk])
        soft = None
        if teacher is not None:
            missing = np.full(len(LABELS), np.nan, dtype=np.float32)
            soft = torch.from_numpy(np.stack([teacher.get(e.text, missing) for e in chunk]))
        yield encoded, labels, soft


def train(config: TrainConfig) -> Path:
    """Runs the fine-tuning and returns the path of the best checkpoint."""
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    output = Path(config.output)
    last_dir, best_dir = output / "last", output / "best"
    base_model = resolve_base_model(config.base_model)
    seed_everything(config.seed)
    dataset = load_datasets(
        config.datasets,
        skip_bad_rows=config.skip_bad_rows,
        text_column=config.text_column,
        label_column=config.label_column,
    )
    parts = split(dataset, seed=config.split_seed)
    train_examples = parts.train[: config.max_examples] if config.max_examples else parts.train
    teacher, distillation = _soft_labels(config, dataset.files, parts)
    if teacher is not None:  # the teacher's unlabelled texts join the labelled training split
        labelled = {e.text for e in parts.train}
        unlabelled = [Example(t, "", "soft-labels", 0) for t in teacher if t not in labelled]
        train_examples, distillation["unlabelled_texts"] = train_examples + unlabelled, len(unlabelled)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_amp = device.type == "cuda"

    resume_state = None
    if (last_dir / "trainer_state.pt").exists() and config.extra.get("resume"):
        model, tokenizer, _ = SentimentClassifier.load(last_dir)
        resume_state = torch.load(last_dir / "trainer_state.pt", map_location="cpu", weights_only=False)
    else:
        model = SentimentClassifier.from_base(base_model)
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    model.to(device)

    steps_per_epoch = (len(train_examples) + config.batch_size - 1) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = None
    if config.class_weights:
        counts = np.bincount([LABEL_TO_ID[e.label] for e in train_examples if e.label], minlength=len(LABELS)).astype(
            float
        )
        weights = torch.tensor(counts.sum() / (len(LABELS) * np.maximum(counts, 1)), dtype=torch.float32, device=device)
    reduction = "none" if teacher is not None else "mean"  # distillation weighs each example itself
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing, reduction=reduction)

    history: list[dict] = []
    start_epoch, step, best_f1, stale = 0, 0, -1.0, 0
    done_in_epoch: list[float] = []  # losses of the batches an interrupted epoch already trained on
    if resume_state:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        # States written before mid-epoch saves existed name the last finished epoch instead.
        start_epoch = resume_state["next_epoch"] if "next_epoch" in resume_state else resume_state["epoch"] + 1
        step, done_in_epoch = resume_state["step"], resume_state.get("epoch_losses", [])
        best_f1, stale, history = resume_state["best_f1"], resume_state["stale"], resume_state["history"]
        torch.set_rng_state(resume_state["rng"])
        print(f"resuming at epoch {start_epoch + 1}, batch {len(done_in_epoch) + 1}")
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(start_epoch):  # same shuffles as an uninterrupted run
        torch.randperm(len(train_examples), generator=generator)

    def save_state(next_epoch: int, epoch_losses: list[float]) -> None:
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "next_epoch": next_epoch,
                "epoch_losses": epoch_losses,  # non-empty: next_epoch is under way, this many batches in
                "step": step,
                "best_f1": best_f1,
                "stale": stale,
                "history": history,
                "rng": torch.get_rng_state(),
            },
            last_dir / "trainer_state.pt",
        )

    meta = {
        "base_model": base_model,
        "labels": list(LABELS),
        "max_length": config.max_length,
        "config": asdict(config),
        "data": {
            "files": dataset.files,
            "split_seed": config.split_seed,
            "test_size": 0.2,
            "dev_size": 0.1,
            "sizes": {
                "train": len(train_examples) - distillation.get("unlabelled_texts", 0),
                "dev": len(parts.dev),
                "test": len(parts.test),
            },
            "duplicates_removed": dataset.duplicates_removed,
            "conflicting_removed": dataset.conflicting_removed,
            "bad_rows": dict(dataset.bad_rows),
        },
    }
    if distillation:
        meta["distillation"] = distillation
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started = time.perf_counter()
        bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", unit="batch")
        losses, done_in_epoch = done_in_epoch, []
        bar.update(len(losses))
        saved_at = time.monotonic()
        for index, (encoded, labels, soft) in enumerate(
            batches(train_examples, tokenizer, config.batch_size, config.max_length, True, generator, teacher)
        ):
            if index < len(losses):  # trained on before the interruption
                continue
            encoded, labels = encoded.to(device), labels.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(**encoded).float()
            if soft is None:
                loss = loss_fn(logits, labels)
            else:
                loss = distillation_loss(
                    logits, labels, soft.to(device), config.distill_alpha, config.distill_temperature, loss_fn
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.update()
            if config.max_steps and step >= config.max_steps:
                break
            if time.monotonic() - saved_at > config.checkpoint_minutes * 60:
                model.save(last_dir, tokenizer, {**meta, "epoch": epoch})
                save_state(epoch, losses)
                saved_at = time.monotonic()
        bar.close()
        dev_logits = predict_logits(model, tokenizer, [e.text for e in parts.dev], config.max_length, device)
        dev = classification_metrics([LABEL_TO_ID[e.label] for e in parts.dev], dev_logits)
        record = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(np.mean(losses)) if losses else None,
            "losses": [round(x, 5) for x in losses],
            "dev_accuracy": dev["accuracy"],
            "dev_macro_f1": dev["macro_f1"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        history.append(record)
        print(
            f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, dev accuracy {dev['accuracy']:.4f}, "
            f"dev macro-F1 {dev['macro_f1']:.4f} ({record['seconds']} s)"
        )
        meta["history"] = history
        if dev["macro_f1"] > best_f1:
            best_f1, stale = dev["macro_f1"], 0
            model.save(best_dir, tokenizer, {**meta, "epoch": epoch + 1, "dev_metrics": dev})
        else:
            stale += 1
        model.save(last_dir, tokenizer, {**meta, "epoch": epoch + 1})
        save_state(epoch + 1, [])
        if stale >= config.patience:
            print(f"early stopping: dev macro-F1 has not improved for {stale} epochs")
            break
        if config.max_steps and step >= config.max_steps:
            break
    (output / "history.json").write_text(json.dumps(history, indent=2))
    return best_dir


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
