"""The model bundle: a directory that ``finsent export`` writes and the pipeline opens.

Contents: ``model.onnx`` (fp32, graph-optimised), ``model.int8.onnx`` (dynamic INT8, for CPU),
``model.fp16.onnx`` (for GPU), the tokenizer files, ``labels.json`` and ``manifest.json``
(format version, model version, base model, training data with sha256, split seed, metrics,
parity, created_at, sha256 of every file). ``open_bundle`` is the only way the pipeline opens
one: it refuses a bundle with a missing file, a checksum mismatch or an unknown format.
No torch here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .schemas import LABELS

BUNDLE_FORMAT_VERSION = 1
MENTION_INPUT = "mention_mask"  # the entity head's input: [batch, mentions, sequence]
MANIFEST = "manifest.json"
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
REQUIRED_FILES = (*VARIANT_FILES.values(), "tokenizer.json", "labels.json")


class BundleError(ValueError):
    """A model bundle is missing, incomplete, corrupted or of an unknown format."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def heads(self) -> dict | None:
        """``{"topic": {"labels", "temperature"}, "entity": {"labels", "pooling", "temperature"}}``
        for a three-head bundle; None for a single-head one (message sentiment only)."""
        return self.manifest.get("heads")

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def cpu_variant(self) -> str:
        """The variant a CPU runs by default: the faster of INT8 and fp32 as export measured them
        (a weight-only INT8 model can be slower than fp32); INT8 for bundles that do not say."""
        return self.manifest.get("cpu_variant", "int8")

    def model_file(self, variant: str) -> Path:
        if variant not in VARIANT_FILES:
            raise BundleError(f"unknown model variant {variant!r}; choose from {', '.join(VARIANT_FILES)}")
        return self.path / VARIANT_FILES[variant]

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"


def write_manifest(path: Path, manifest: dict) -> dict:
    """Completes and writes manifest.json: format version, created_at and every file's sha256."""
    files = {
        p.relative_to(path).as_posix(): sha256_of(p)
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    full = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": files,
    }
    (path / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
    return full


def open_bundle(path: Path | str, verify_checksums: bool = True) -> Bundle:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"model bundle {path}: no such directory")
    if not manifest_path.is_file():
        raise BundleError(f"model bundle {path}: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise BundleError(f"model bundle {path}: {MANIFEST} is not valid JSON ({exc})") from None
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"model bundle {path}: unknown format version {version!r} "
            f"(this finsent reads version {BUNDLE_FORMAT_VERSION})"
        )
    for key in ("model_version", "labels", "max_length", "files"):
        if key not in manifest:
            raise BundleError(f"model bundle {path}: {MANIFEST} lacks {key!r}")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise BundleError(f"model bundle {path}: {name} is missing")
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"model bundle {path}: {name} is missing")
        if verify_checksums and sha256_of(file) != expected:
            raise BundleError(f"model bundle {path}: checksum mismatch for {name} (file changed after export)")
    labels = json.loads((path / "labels.json").read_text())
    if labels != list(LABELS) or manifest["labels"] != list(LABELS):
        raise BundleError(f"model bundle {path}: labels {labels} differ from finsent's {list(LABELS)}")
    _check_heads(path, manifest.get("heads"))
    if manifest.get("cpu_variant", "int8") not in VARIANT_FILES:
        raise BundleError(
            f"model bundle {path}: cpu_variant {manifest['cpu_variant']!r} is not one of {list(VARIANT_FILES)}"
        )
    return Bundle(path, manifest)


def _check_heads(path: Path, heads) -> None:
    if heads is None:
        return
    where = f"model bundle {path}: {MANIFEST} heads"
    if not isinstance(heads, dict) or set(heads) != {"topic", "entity"}:
        raise BundleError(f"{where} must name exactly 'topic' and 'entity'")
    topics = heads["topic"].get("labels") if isinstance(heads["topic"], dict) else None
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) and t for t in topics):
        raise BundleError(f"{where}.topic.labels must be a non-empty list of topic names")
    entity = heads["entity"] if isinstance(heads["entity"], dict) else {}
    if entity.get("labels") != list(LABELS):
        raise BundleError(f"{where}.entity.labels must be {list(LABELS)}")
    for name in ("topic", "entity"):
        temperature = heads[name].get("temperature", 1.0)
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise BundleError(f"{where}.{name}.temperature must be a positive number, not {temperature!r}")
