"""Provider and variant choice (pipeline.classify), with ONNX Runtime's provider list faked: this
machine has no GPU. The real CUDA path was checked on a GPU machine (README, "GPU")."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from pipeline import classify
from pipeline.bundle import BundleError, open_bundle
from pipeline.classify import LENGTH_SLACK, Classifier, choose_runtime

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def gpu_build(monkeypatch):
    """onnxruntime-gpu's provider list (it names TensorRT whether or not TensorRT is installed)."""
    preloads = []
    monkeypatch.setattr(classify.ort, "get_available_providers", lambda: list(GPU_BUILD))
    monkeypatch.setattr(classify.ort, "preload_dlls", lambda: preloads.append(True), raising=False)
    return preloads


def test_cpu_build_runs_int8_on_the_cpu():
    assert choose_runtime() == ("int8", ["CPUExecutionProvider"])


def test_tensorrt_is_skipped_without_its_library(gpu_build, monkeypatch):
    monkeypatch.setattr(classify, "_tensorrt_present", lambda: False)
    variant, providers = choose_runtime()
    assert variant == "fp16"
    assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert gpu_build, "CUDA libraries from the nvidia-* packages must be preloaded"


def test_tensorrt_comes_first_when_installed(gpu_build, monkeypatch):
    monkeypatch.setattr(classify, "_tensorrt_present", lambda: True)
    variant, providers = choose_runtime()
    assert variant == "fp16"
    assert providers[0][0] == "TensorrtExecutionProvider" and providers[0][1]["trt_fp16_enable"]
    assert providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_explicit_choices_are_honoured_or_refused(gpu_build):
    assert choose_runtime("fp32", ["CUDAExecutionProvider"]) == ("fp32", ["CUDAExecutionProvider"])
    with pytest.raises(ValueError, match="ROCMExecutionProvider"):
        choose_runtime(None, ["ROCMExecutionProvider"])


def test_failed_gpu_provider_falls_back_to_int8_on_the_cpu(tiny_bundle: Path, gpu_build, monkeypatch, caplog):
    """What ONNX Runtime does when the CUDA libraries cannot load: the session comes up on the CPU.
    The worker must then run the INT8 model with CPU batching, and say so."""
    real_session = ort.InferenceSession
    requested = []

    def session_without_gpu(path, options, providers):
        requested.append((Path(path).name, providers))
        return real_session(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(classify, "_tensorrt_present", lambda: False)
    monkeypatch.setattr(classify.ort, "InferenceSession", session_without_gpu)
    with caplog.at_level(logging.WARNING, logger="pipeline.classify"):
        classifier = Classifier(open_bundle(tiny_bundle))
    assert requested[0] == ("model.fp16.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert requested[1] == ("model.int8.onnx", ["CPUExecutionProvider"])
    assert (classifier.variant, classifier.provider) == ("int8", "CPUExecutionProvider")
    assert classifier.length_slack == LENGTH_SLACK
    assert "could not use CUDAExecutionProvider" in caplog.text
    assert classifier.predict_proba(["Operating profit rose"]).shape == (1, 3)


def test_an_explicit_variant_is_kept_after_a_fallback(tiny_bundle: Path, gpu_build, monkeypatch):
    real_session = ort.InferenceSession
    monkeypatch.setattr(classify, "_tensorrt_present", lambda: False)
    monkeypatch.setattr(
        classify.ort,
        "InferenceSession",
        lambda path, options, providers: real_session(path, options, providers=["CPUExecutionProvider"]),
    )
    classifier = Classifier(open_bundle(tiny_bundle), variant="fp32")
    assert (classifier.variant, classifier.provider) == ("fp32", "CPUExecutionProvider")


def test_the_cpu_runs_the_variant_export_measured_faster(tiny_bundle: Path, tmp_path: Path):
    bundle = open_bundle(tiny_bundle)
    speeds = bundle.manifest["parity"]["cpu_msgs_per_s"]
    assert set(speeds) == {"int8", "fp32"} and min(speeds.values()) > 0
    assert bundle.cpu_variant == ("fp32" if speeds["fp32"] > 1.05 * speeds["int8"] else "int8")
    assert Classifier(bundle).variant == bundle.cpu_variant
    # A bundle whose fp32 model ran faster (a weight-only INT8 model can) runs fp32 by default,
    # unless a variant is chosen; older bundles without the field run INT8.
    for value, default in (("fp32", "fp32"), ("int8", "int8"), (None, "int8")):
        copy = tmp_path / f"bundle-{value}"
        shutil.copytree(tiny_bundle, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest.pop("cpu_variant")
        if value:
            manifest["cpu_variant"] = value
        (copy / "manifest.json").write_text(json.dumps(manifest))
        assert Classifier(open_bundle(copy)).variant == default
        assert Classifier(open_bundle(copy), variant="int8").variant == "int8"
    manifest["cpu_variant"] = "int4"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cpu_variant 'int4' is not one of"):
        open_bundle(copy)
