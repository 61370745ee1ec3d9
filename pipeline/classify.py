"""Classifier: a list of texts -> class probabilities, with ONNX Runtime (no Kafka, no torch).

Texts are tokenised with the bundle's fast tokenizer, sorted by length, run in buckets of similar
length each padded to its own longest member (padding is most of the cost otherwise), then put
back in order.
Providers are chosen automatically: TensorRT or CUDA with the fp16 model when a GPU is there,
CPU with the INT8 model otherwise; both can be overridden.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import metrics
from .bundle import MENTION_INPUT, Bundle, open_bundle

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
LENGTH_SLACK = 1.5  # on the CPU a bucket's longest text may be this many times its shortest (see _length_buckets)
TENSORRT_LIBRARY = "libnvinfer.so.10"


def _tensorrt_present() -> bool:
    """onnxruntime-gpu lists TensorRT as available whether or not TensorRT is installed; asking
    for it without the library costs an error banner and a second session build."""
    try:
        ctypes.CDLL(TENSORRT_LIBRARY)
    except OSError:
        return False
    return True


def _preload_cuda_libraries() -> None:
    """CUDA and cuDNN from the nvidia-* pip packages (``pip install onnxruntime-gpu[cuda,cudnn]``)
    are not on the loader's path; ONNX Runtime >= 1.21 can load them itself."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # a missing library shows when the session is built, with a clearer error
            log.debug("onnxruntime.preload_dlls: %s", exc)


def choose_runtime(
    variant: str | None = None, providers: list[str] | None = None, cpu_variant: str = "int8"
) -> tuple[str, list]:
    """(variant, providers) for this machine, honouring explicit choices; on the CPU by default
    ``cpu_variant`` (the bundle's faster one, measured at export: see ``Bundle.cpu_variant``)."""
    available = ort.get_available_providers()
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"ONNX Runtime providers {missing} are not available here (available: {available})")
        chosen = list(providers)
    else:
        gpu = [p for p in GPU_PROVIDERS if p in available]
        if "TensorrtExecutionProvider" in gpu and not _tensorrt_present():
            gpu.remove("TensorrtExecutionProvider")
        chosen = gpu + ["CPUExecutionProvider"]
    on_gpu = chosen[0] in GPU_PROVIDERS
    if on_gpu:
        _preload_cuda_libraries()
    if variant is None:
        variant = "fp16" if on_gpu else cpu_variant
    if on_gpu and variant == "int8":
        log.warning("INT8 dynamic quantisation runs poorly on GPU providers; prefer the fp16 variant")
    options = []
    for provider in chosen:
        if provider == "TensorrtExecutionProvider":
            options.append((provider, {"trt_fp16_enable": True, "trt_engine_cache_enable": True}))
        else:
            options.append(provider)
    return variant, options


def mention_masks(offsets: list, spans: list[list[tuple[int, int]]], width: int) -> np.ndarray:
    """The entity head's input: [texts, mentions, width] float32, 1 on the tokens whose characters
    overlap the mention's span (``offsets``: each text's token character offsets, (0, 0) for
    special tokens). At least one mention row; a row for a missing or truncated-away mention is
    all zero."""
    count = max([len(s) for s in spans] + [1])
    out = np.zeros((len(offsets), count, width), dtype=np.float32)
    for row, (tokens, row_spans) in enumerate(zip(offsets, spans, strict=True)):
        if not row_spans or not len(tokens):
            continue
        bounds = np.asarray(tokens, dtype=np.int64).reshape(-1, 2)[:width]
        for k, (start, end) in enumerate(row_spans):
            out[row, k, : len(bounds)] = (bounds[:, 0] < end) & (bounds[:, 1] > start) & (bounds[:, 1] > bounds[:, 0])
    return out


@dataclass(frozen=True)
class Inference:
    """Every head's probabilities for a list of texts."""

    message: np.ndarray  # [texts, labels]
    topics: np.ndarray | None  # [texts, topics]; None for a single-head bundle
    entities: list[np.ndarray]  # per text, [its mentions, labels]
    from_message: list[np.ndarray]  # per text and mention: True where the message's probabilities stand in


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class Classifier:
    def __init__(
        self,
        bundle: Bundle,
        variant: str | None = None,
        providers: list[str] | None = None,
        batch_size: int = 32,
        intra_op_threads: int | None = None,
        length_slack: float | None = None,
    ):
        self.bundle = bundle
        # Fitted on the dev split at export (manifest ``temperature``); 1.0 for older bundles.
        self.temperature = float(bundle.manifest.get("temperature", 1.0))
        self.variant, provider_options = choose_runtime(variant, providers, bundle.cpu_variant)
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle inference threads spinning for work would take the CPU the worker's event loop needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        self.session = self._session(options, provider_options)
        requested = provider_options[0] if isinstance(provider_options[0], str) else provider_options[0][0]
        if self.provider != requested:
            # ONNX Runtime fell back (e.g. CUDA libraries missing): say so, and on the CPU run the
            # bundle's CPU variant rather than the fp16 one chosen for the GPU.
            log.warning("ONNX Runtime could not use %s and fell back to %s", requested, self.provider)
            if variant is None and self.variant != bundle.cpu_variant and self.provider == "CPUExecutionProvider":
                self.variant = bundle.cpu_variant
                self.session = self._session(options, ["CPUExecutionProvider"])
        if length_slack is None:
            # On a GPU each extra call costs more than the padding it saves (H200, fp16, batches of
            # 32 FPB sentences: 3,900 msg/s bucketed, 5,300 as one padded batch).
            length_slack = LENGTH_SLACK if self.provider == "CPUExecutionProvider" else float("inf")
        self.length_slack = length_slack
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = Tokenizer.from_file(str(bundle.tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(bundle.max_length)
        padding = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = padding if padding is not None else 0
        log.info("model %s (%s) on %s", bundle.model_version, self.variant, self.provider)

    def _session(self, options, provider_options) -> ort.InferenceSession:
        return ort.InferenceSession(str(self.bundle.model_file(self.variant)), options, providers=provider_options)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    @property
    def heads(self) -> dict | None:
        """The bundle's topic and entity heads (manifest ``heads``), None for a single-head one."""
        return self.bundle.heads

    def _run(self, encodings, spans: list | None = None) -> list[np.ndarray]:
        width = max(len(e.ids) for e in encodings)
        shape = (len(encodings), width)
        arrays = {
            "input_ids": np.full(shape, self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros(shape, dtype=np.int64),
            "token_type_ids": np.zeros(shape, dtype=np.int64),
        }
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            arrays["input_ids"][row, :n] = encoding.ids
            arrays["attention_mask"][row, :n] = encoding.attention_mask
            arrays["token_type_ids"][row, :n] = encoding.type_ids
        if MENTION_INPUT in self.input_names:
            spans = spans or [[] for _ in encodings]
            arrays[MENTION_INPUT] = mention_masks([e.offsets for e in encodings], spans, width)
        outputs = [o.astype(np.float32) for o in self.session.run(None, {n: arrays[n] for n in self.input_names})]
        if MENTION_INPUT in arrays:  # a mention with no token (truncated away) has no entity logits
            outputs[2][~arrays[MENTION_INPUT].any(axis=2)] = np.nan
        return outputs

    def _forward(self, texts: list[str], spans: list | None = None):
        """(message logits, topic logits or None, entity logits per text or None), in text order."""
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        message = np.empty((len(texts), len(self.bundle.labels)), dtype=np.float32)
        topic = np.empty((len(texts), len(self.heads["topic"]["labels"])), np.float32) if self.heads else None
        entity: list | None = [None] * len(texts) if self.heads else None
        for idx in self._length_buckets(order, [len(e.ids) for e in encodings]):
            outputs = self._run([encodings[i] for i in idx], [spans[i] for i in idx] if spans else None)
            message[idx] = outputs[0]
            if self.heads:
                topic[idx] = outputs[1]
                for row, i in enumerate(idx):
                    entity[i] = outputs[2][row, : len(spans[i]) if spans else 0]
        return message, topic, entity

    def logits(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.bundle.labels)), dtype=np.float32)
        return self._forward(texts)[0]

    def head_logits(self, texts: list[str], spans: list[list[tuple[int, int]]]):
        """(message, topic, entity per text) logits; topic and entity None for a single-head bundle."""
        if not texts:
            topics = np.zeros((0, len(self.heads["topic"]["labels"])), np.float32) if self.heads else None
            return np.zeros((0, len(self.bundle.labels)), dtype=np.float32), topics, [] if self.heads else None
        return self._forward(texts, spans)

    def infer(self, texts: list[str], spans: list[list[tuple[int, int]]]) -> Inference:
        """Calibrated probabilities of every head, one pass per text; ``spans``: each text's entity
        mentions as character (start, end). A single-head bundle gives no topics and each mention
        the message's probabilities; so does a mention truncated away (``from_message``)."""
        message, topic, entity = self.head_logits(texts, spans)
        message = softmax(message / self.temperature)
        if not self.heads:
            copied = [np.repeat(message[i : i + 1], len(s), 0) for i, s in enumerate(spans)]
            return Inference(message, None, copied, [np.ones(len(s), bool) for s in spans])
        topic = softmax(topic / float(self.heads["topic"].get("temperature", 1.0)))
        temperature = float(self.heads["entity"].get("temperature", 1.0))
        # One softmax over every mention of the batch; a mention truncated away (NaN logits)
        # takes its text's message probabilities.
        counts = [len(logits) for logits in entity]
        if not counts:
            return Inference(message, topic, [], [])
        stacked = np.concatenate(entity)
        missing = np.isnan(stacked).any(axis=1)
        probs = softmax(np.nan_to_num(stacked) / temperature)
        probs[missing] = np.repeat(message, counts, axis=0)[missing]
        bounds = np.cumsum(counts)[:-1]
        return Inference(message, topic, np.split(probs, bounds), np.split(missing, bounds))

    def _length_buckets(self, order: list[int], lengths: list[int]):
        """Runs of length-sorted texts whose longest is at most ``length_slack`` x the shortest:
        padding a 12-token text to 64 costs more than a second ONNX Runtime call (on 2 cores,
        INT8, batches of 32 FPB sentences: ~150 msg/s in one call, ~300 bucketed)."""
        start = 0
        while start < len(order):
            end, limit = start + 1, lengths[order[start]] * self.length_slack
            while end < len(order) and end - start < self.batch_size and lengths[order[end]] <= limit:
                end += 1
            yield order[start:end]
            start = end

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Calibrated probabilities: softmax(logits / temperature)."""
        return softmax(self.logits(texts) / self.temperature)


def worker_inference_threads() -> int:
    """All cores but one: the worker's event loop (decoding, writes, windows) needs the other,
    and an inference thread that loses its core stalls the parallel sections of every other."""
    return max(1, (os.cpu_count() or 2) - 1)


class ModelHolder:
    """The classifier in use; ``maybe_swap`` replaces it between batches when the bundle changes.
    The serving model by default; ``candidate=True`` holds the shadow candidate instead (its own
    bundle path and thread count, no model_info series)."""

    def __init__(self, settings: Settings, candidate: bool = False):
        self.settings, self.candidate = settings, candidate
        self.path: Path = settings.shadow_bundle if candidate else settings.model_bundle
        self.classifier = self._load()
        self._refused: tuple[str, str] | None = None  # a broken bundle is tried once, not every poll

    def _load(self) -> Classifier:
        bundle = open_bundle(self.path.resolve())
        settings = self.settings
        threads = settings.shadow_inference_threads if self.candidate else settings.inference_threads
        classifier = Classifier(
            bundle,
            variant=settings.model_variant,
            providers=settings.onnx_providers or None,
            batch_size=settings.max_batch,
            intra_op_threads=threads or worker_inference_threads(),
        )
        log.info(
            "%s model %s loaded from %s: variant %s on %s",
            "candidate" if self.candidate else "serving",
            bundle.model_version,
            bundle.path,
            classifier.variant,
            classifier.provider,
        )
        if not self.candidate:
            metrics.set_model_info(bundle.model_version, classifier.provider, classifier.variant)
        return classifier

    def bundle_on_disk(self) -> tuple[str, str] | None:
        """(model version, manifest digest) of the bundle the path points at now: a bundle that
        failed to load is known by its content, and tried again only once that changes."""
        try:
            manifest = (self.path.resolve() / "manifest.json").read_bytes()
            return json.loads(manifest)["model_version"], hashlib.sha256(manifest).hexdigest()
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def maybe_swap(self, loop, executor) -> bool:
        on_disk = self.bundle_on_disk()
        if on_disk is None or on_disk[0] == self.classifier.model_version or on_disk == self._refused:
            return False
        try:
            classifier = await loop.run_in_executor(executor, self._load)
        except Exception:  # a broken new bundle must not stop the worker: keep the old model
            log.exception(
                "new model bundle at %s could not be loaded; keeping %s", self.path, self.classifier.model_version
            )
            self._refused = on_disk
            return False
        self.classifier = classifier  # atomic between batches: a batch holds its own reference
        metrics.MODEL_SWAPS.inc()
        return True
