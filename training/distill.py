"""Knowledge distillation: a large teacher's soft labels, kept as a versioned file, teach the
small student (``finsent train --soft-labels FILE``).

``finsent soft-labels TEACHER/best -o FILE`` scores the teacher's own training split plus
unlabelled finance text (by default the Twitter Financial News *topic* train file's texts) and
writes them as gzipped JSON lines: a first ``{"meta": ...}`` line (teacher, data hashes, split
seed, the command that regenerates the file), then one ``{"text", "logits"}`` line per text.
Texts of the dev and test splits are never scored, so distillation cannot leak them into
training; the student checks that it splits the same files with the same seed.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from pipeline.bundle import sha256_of

from .config import DATA_DIR, DEFAULT_UNLABELLED
from .data import BadDataError, load_datasets, split


def portable(path: Path | str) -> str:
    """A data path as the file records it: relative to the repository when inside it, so the
    file reads the same from any clone."""
    path = Path(path).resolve()
    return str(path.relative_to(DATA_DIR.parent)) if path.is_relative_to(DATA_DIR.parent) else str(path)


class SoftLabelError(ValueError):
    """A soft-label file that does not fit the run (other data, other split) or is malformed."""


def unlabelled_texts(path: Path | str, text_column: str = "text") -> list[str]:
    """The non-empty texts of a CSV file's ``text_column`` (labels, if any, are ignored)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if text_column not in (reader.fieldnames or []):
            raise BadDataError(f"{path}: no {text_column!r} column (columns: {reader.fieldnames})")
        return [row[text_column].strip() for row in reader if (row[text_column] or "").strip()]


def write_soft_labels(
    teacher: Path | str,
    output: Path | str,
    unlabelled: list[Path | str] | None = None,
    max_unlabelled: int | None = None,
    log=print,
) -> dict:
    """Scores the teacher's training split and the unlabelled texts; returns the file's meta."""
    from .inference import best_device, predict_logits
    from .model import SentimentClassifier

    teacher, output = Path(teacher), Path(output)
    model, tokenizer, meta = SentimentClassifier.load(teacher)
    files = list(meta["data"]["files"])
    parts = split(
        load_datasets(files, skip_bad_rows=meta["config"].get("skip_bad_rows", False)), meta["data"]["split_seed"]
    )
    held_out = {e.text for e in parts.dev + parts.test}
    texts = [e.text for e in parts.train]
    seen = set(texts) | held_out
    sources = [Path(p) for p in (DEFAULT_UNLABELLED if unlabelled is None else unlabelled)]
    extra: list[str] = []
    for source in sources:
        for text in unlabelled_texts(source):
            if text not in seen:
                seen.add(text)
                extra.append(text)
    extra = extra[:max_unlabelled] if max_unlabelled is not None else extra
    log(f"teacher {teacher}: scoring {len(texts)} training texts and {len(extra)} unlabelled ones")
    logits = predict_logits(model.to(best_device()), tokenizer, texts + extra, meta["max_length"], progress=True)
    file_meta = {
        "teacher": str(teacher),
        "teacher_base_model": meta["base_model"],
        "teacher_dev_metrics": {k: meta.get("dev_metrics", {}).get(k) for k in ("accuracy", "macro_f1")},
        "training_data": {portable(p): digest for p, digest in meta["data"]["files"].items()},
        "split_seed": meta["data"]["split_seed"],
        "unlabelled": {portable(p): sha256_of(p) for p in sources},
        "labelled_texts": len(texts),
        "unlabelled_texts": len(extra),
        "command": "finsent soft-labels " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["soft-labels"] else None,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with gzip.open(partial, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"meta": file_meta}) + "\n")
        for text, row in zip(texts + extra, logits, strict=True):
            handle.write(json.dumps({"text": text, "logits": [round(float(x), 4) for x in row]}) + "\n")
    partial.replace(output)
    log(f"written {output}")
    return file_meta


def load_soft_labels(path: Path | str) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, text -> teacher logits); errors name the file and line."""
    path = Path(path)
    logits: dict[str, np.ndarray] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline() or "{}")
        if "meta" not in first:
            raise SoftLabelError(f"{path}:1: no meta line; write the file with `finsent soft-labels`")
        for number, line in enumerate(handle, start=2):
            try:
                row = json.loads(line)
                values = np.asarray(row["logits"], dtype=np.float32)
                text = row["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise SoftLabelError(f"{path}:{number}: not a text with logits ({exc})") from exc
            if values.shape != (3,) or not np.isfinite(values).all():
                raise SoftLabelError(f"{path}:{number}: logits must be 3 finite numbers, got {row['logits']}")
            logits[text] = values
    return first["meta"], logits


def check_fits(meta: dict, files: dict[str, str], split_seed: int, path: Path | str) -> None:
    """The student must split the same files with the same seed, or its dev/test texts could
    have been scored as training text."""
    by_hash = sorted(meta["training_data"].values())
    if sorted(files.values()) != by_hash or meta["split_seed"] != split_seed:
        raise SoftLabelError(
            f"{path}: scored for other training data or split (files {sorted(meta['training_data'])}, "
            f"split seed {meta['split_seed']}); train on the same files with --split-seed {meta['split_seed']}"
        )


def distillation_loss(
    student: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor,
    alpha: float,
    temperature: float,
    class_loss=None,
) -> torch.Tensor:
    """Mean over the batch of ``alpha`` x T^2 x KL(teacher_T || student_T) + (1 - alpha) x
    cross-entropy. Rows without a label (label -1) learn from the teacher alone; rows without
    teacher logits (NaN) from the label alone."""
    has_label, has_teacher = labels >= 0, ~torch.isnan(teacher).any(dim=1)
    losses = torch.zeros(student.shape[0], device=student.device)
    if has_teacher.any():
        log_student = torch.log_softmax(student[has_teacher] / temperature, dim=1)
        target = torch.softmax(teacher[has_teacher] / temperature, dim=1)
        soft = torch.nn.functional.kl_div(log_student, target, reduction="none").sum(dim=1) * temperature**2
        losses[has_teacher] += torch.where(has_label[has_teacher], alpha, 1.0) * soft
    if has_label.any():
        class_loss = class_loss or torch.nn.CrossEntropyLoss(reduction="none")
        hard = class_loss(student[has_label], labels[has_label])
        losses[has_label] += torch.where(has_teacher[has_label], 1.0 - alpha, 1.0) * hard
    return losses.mean()
