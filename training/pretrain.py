"""Domain-adaptive pretraining (``finsent pretrain``): the base encoder keeps learning masked-language
modelling, now on finance text, before it is fine-tuned (``finsent train --base-model DIR``).

The texts are the training split of the labelled files (never their dev or test texts) plus
unlabelled finance text, by default the Twitter Financial News *topic* train file's. The output
directory is a plain Hugging Face encoder checkpoint (encoder and tokenizer, no MLM head) with a
``finsent_pretrain.json`` that records the data, the settings and the masked-LM loss on the dev
split's texts before and after, the figure that says whether adaptation did anything.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.bundle import sha256_of
from pipeline.progress import Progress

from .config import PretrainConfig
from .data import load_datasets, split
from .distill import portable, unlabelled_texts
from .inference import best_device
from .model import resolve_base_model
from .train import seed_everything

META = "finsent_pretrain.json"


def adaptation_texts(config: PretrainConfig) -> tuple[list[str], list[str]]:
    """(training texts, held-out dev texts): the labelled files' training split plus the
    unlabelled texts, without duplicates and without any dev or test text."""
    parts = split(load_datasets(config.datasets), seed=config.split_seed)
    held_out = {e.text for e in parts.dev} | {e.text for e in parts.test}
    texts = dict.fromkeys(e.text for e in parts.train)
    for path in config.unlabelled:
        texts.update(dict.fromkeys(t for t in unlabelled_texts(path) if t not in held_out))
    return list(texts), [e.text for e in parts.dev]


class MaskedLM:
    """A masked-LM model whose vocabulary head runs on the masked positions only (the head is as
    costly as the encoder when run on every token)."""

    def __init__(self, base_model: str, device: torch.device, max_length: int, mask_probability: float):
        from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.model = AutoModelForMaskedLM.from_pretrained(base_model).to(device)
        self.device = device
        self.head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        self.collator = DataCollatorForLanguageModeling(self.tokenizer, mlm_probability=mask_probability)
        self.max_length = max_length

    def freeze_encoder(self, frozen: bool) -> None:
        for param in self.model.base_model.parameters():
            param.requires_grad_(not frozen)

    def masked_batch(self, texts: list[str]) -> dict:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        features = [dict(zip(encoded, values, strict=True)) for values in zip(*encoded.values(), strict=True)]
        return {k: v.to(self.device) for k, v in self.collator(features).items()}

    def loss(self, batch: dict) -> torch.Tensor:
        labels = batch.pop("labels")
        if self.head is None:  # an architecture without a known head attribute: the full forward
            return self.model(**batch, labels=labels).loss
        hidden = self.model.base_model(**batch).last_hidden_state
        masked = labels != -100
        logits = self.head(hidden[masked])
        return torch.nn.functional.cross_entropy(logits, labels[masked])

    @torch.no_grad()
    def held_out_loss(self, texts: list[str]) -> float:
        """Mean masked-LM loss over ``texts`` with a fixed masking (same seed before and after)."""
        self.model.eval()
        state = torch.get_rng_state()
        torch.manual_seed(1234)
        losses = [self.loss(self.masked_batch(texts[i : i + 64])).item() for i in range(0, len(texts), 64)]
        torch.set_rng_state(state)
        self.model.train()
        return sum(losses) / max(len(losses), 1)


def pretrain(config: PretrainConfig, log=print) -> Path:
    """Runs the adaptation and returns the output directory (an encoder checkpoint)."""
    from transformers import get_linear_schedule_with_warmup

    seed_everything(config.seed)
    base_model = resolve_base_model(config.base_model)
    texts, dev_texts = adaptation_texts(config)
    mlm = MaskedLM(base_model, best_device(), config.max_length, config.mask_probability)
    dev_before = mlm.held_out_loss(dev_texts)
    log(f"{len(texts)} texts; dev masked-LM loss before: {dev_before:.3f}")
    steps_per_epoch = (len(texts) + config.batch_size - 1) // config.batch_size
    total = min(steps_per_epoch * config.epochs, config.max_steps or steps_per_epoch * config.epochs)
    optimizer = torch.optim.AdamW(mlm.model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * total), total)
    generator = torch.Generator().manual_seed(config.seed)
    started, step, history = time.monotonic(), 0, []
    mlm.model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(texts), generator=generator).tolist()
        losses: list[float] = []
        with Progress(min(steps_per_epoch, total - step), f"pretrain {epoch + 1}/{config.epochs}", "batch") as bar:
            for start in range(0, len(order), config.batch_size):
                if step >= total:
                    break
                if step in (0, config.head_warmup_steps):  # the head warm-up starts or ends
                    mlm.freeze_encoder(step < config.head_warmup_steps)
                batch = mlm.masked_batch([texts[i] for i in order[start : start + config.batch_size]])
                loss = mlm.loss(batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(mlm.model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / max(len(losses), 1)})
    dev_after = mlm.held_out_loss(dev_texts)
    log(f"dev masked-LM loss after: {dev_after:.3f} ({time.monotonic() - started:.0f} s)")
    return _save(mlm, config, base_model, len(texts), history, dev_before, dev_after)


def _save(mlm: MaskedLM, config, base_model, n_texts, history, dev_before, dev_after) -> Path:
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    # Saved as the base model's own class, so parts the masked-LM model lacks (BERT's pooler) keep
    # their original weights instead of being re-initialised when the encoder is loaded.
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(base_model)
    loaded = encoder.load_state_dict(mlm.model.base_model.state_dict(), strict=False)
    if loaded.unexpected_keys:
        raise RuntimeError(f"the adapted encoder has weights {base_model} lacks: {loaded.unexpected_keys[:5]}")
    encoder.save_pretrained(output)
    mlm.tokenizer.save_pretrained(output)
    meta = {
        "base_model": base_model,
        "config": asdict(config),
        "data": {
            "labelled": {portable(p): sha256_of(Path(p)) for p in config.datasets},
            "unlabelled": {portable(p): sha256_of(Path(p)) for p in config.unlabelled},
            "texts": n_texts,
        },
        "history": history,
        "dev_masked_lm_loss": {"before": dev_before, "after": dev_after},
        "command": "finsent pretrain -o " + str(config.output),
    }
    (output / META).write_text(json.dumps(meta, indent=2))
    return output
