"""Checkpoint -> model bundle: ONNX export, transformer graph optimisation, INT8 and fp16 variants,
parity against torch on the test split. The bundle is built in a temporary directory and moved
into place only when parity holds, so a failed export never leaves a bundle behind.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import warnings
from contextlib import chdir, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from pipeline.bundle import MENTION_INPUT, VARIANT_FILES, Bundle, sha256_of, write_manifest
from pipeline.classify import Classifier, softmax
from pipeline.schemas import LABELS

from .data import LABEL_TO_ID, HeadSplits, head_eval_set, load_datasets, load_head_splits, split
from .inference import predict_heads, predict_logits
from .metrics import classification_metrics, expected_calibration_error, fit_temperature
from .model import SentimentClassifier

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
HEAD_OUTPUTS = ("logits", "topic_logits", "entity_logits")


class ExportError(RuntimeError):
    """Export failed, usually because a variant does not agree with the torch model."""


class _Exportable(torch.nn.Module):
    """Positional inputs in a fixed order for the ONNX graph."""

    def __init__(self, model: SentimentClassifier, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs, strict=False)))


def _export_onnx(model: SentimentClassifier, tokenizer, path: Path, opset: int) -> list[str]:
    sample = tokenizer(
        ["finsent export sample", "a second, longer sample sentence for shapes"], padding=True, return_tensors="pt"
    )
    names = [n for n in ONNX_INPUTS if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    outputs = ["logits"]
    if model.heads:  # two mentions a text in the sample, so the mentions axis stays dynamic
        sample[MENTION_INPUT] = torch.zeros((2, 2, sample["input_ids"].shape[1]))
        sample[MENTION_INPUT][:, 0, 1] = sample[MENTION_INPUT][:, 1, 2] = 1.0
        names.append(MENTION_INPUT)
        axes |= {
            MENTION_INPUT: {0: "batch", 1: "mentions", 2: "sequence"},
            "topic_logits": {0: "batch"},
            "entity_logits": {0: "batch", 1: "mentions"},
        }
        outputs = list(HEAD_OUTPUTS)
    # The tracer warns that the attention mask's constant is fixed at trace time: it is (1.0).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            _Exportable(model, names),
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return names


def _optimise(raw: Path, config, fp32_path: Path, fp16_path: Path) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    kwargs = {"model_type": "bert", "num_heads": config.num_attention_heads, "hidden_size": config.hidden_size}
    optimize_model(str(raw), **kwargs).save_model_to_file(str(fp32_path))
    fp16 = optimize_model(str(raw), **kwargs)
    fp16.convert_float_to_float16(keep_io_types=True)
    fp16.save_model_to_file(str(fp16_path))


# INT8 recipes export tries in order, keeping the first that passes parity (fastest first). Every
# one gives a text the same scores whatever batch it is in: static (calibrated QDQ) recipes fix
# activation scales at export; weight-only recipes (MatMulNBits, 8-bit weights in blocks along K)
# quantise activations per row and block at run time, so a row never sees its batch-mates. The
# mixed recipe is static except where static loses labels (the FFN output projections, whose
# inputs have outliers, and the first layer), which run weight-only (benchmarks.md#int8-recipes);
# the last-layer variant also keeps weight-only the layer whose tokens the entity head pools.
INT8_RECIPES = (
    "static_per_channel",
    "static_per_channel_fp32_ffn_out",
    "mixed_static_weight_only",
    "mixed_static_weight_only_last_layer",
    "weight_only_block128",
    "weight_only_block32",
)
# Dynamic recipes compute activation scales per call from the whole batch, so a text's scores
# move with its batch-mates (a redelivered message could score differently). They are faster,
# and measured by benchmarks/int8_recipes.py for comparison, but export never picks them.
DYNAMIC_INT8_RECIPES = (
    "matmul_attention_per_channel",
    "matmul_attention_per_channel_fp32_ffn_out",
    "matmul_attention_per_channel_fp32_ffn_out_attention_out",
)
CALIBRATION_EXAMPLES = 256
CALIBRATION_DEV_LIMIT = 4000  # dev examples the temperature is fitted on


def _excluded(matmuls: list[str], recipe: str) -> list[str]:
    """The MatMuls a static or dynamic recipe leaves out of activation quantisation."""
    exclude: list[str] = []
    if "_fp32_ffn_out" in recipe or recipe.startswith("mixed"):
        exclude += [n for n in matmuls if n.endswith("output/dense/MatMul") and "attention" not in n]
    if recipe.startswith("mixed"):
        exclude += [n for n in matmuls if "layer.0/" in n and n not in exclude]
    if recipe.endswith("_last_layer"):
        last = max((int(m) for n in matmuls for m in re.findall(r"layer\.(\d+)/", n)), default=0)
        exclude += [n for n in matmuls if f"layer.{last}/" in n and n not in exclude]
    if recipe.endswith("_attention_out"):
        exclude += [n for n in matmuls if "attention/output/dense" in n]
    # The heads' MatMuls (mention pooling, the entity head) are tiny; their inputs stay fp32.
    exclude += [n for n in matmuls if n.startswith("/model/") and "/encoder/" not in n and n not in exclude]
    return exclude


def _calibration_batches(tokenizer, texts: list[str], max_length: int, input_names: list[str], batch_size: int = 16):
    """Training-split texts as ONNX feeds, in batches of similar length (as the worker runs them)."""
    ordered = sorted(texts, key=len)
    for start in range(0, len(ordered), batch_size):
        encoded = tokenizer(
            ordered[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        feed = {name: encoded[name].astype(np.int64) for name in input_names if name in encoded}
        if MENTION_INPUT in input_names:
            feed[MENTION_INPUT] = np.zeros((len(feed["input_ids"]), 1, feed["input_ids"].shape[1]), np.float32)
        yield feed


def _quantise(fp32_path: Path, raw_path: Path, int8_path: Path, recipe: str, calibration) -> None:
    """A dynamic recipe quantises the fused fp32 graph. Static and weight-only ones quantise the
    unfused export: ONNX Runtime's calibrator cannot type the fused graph's contrib ops, and the
    fused Attention op hides the Q/K/V projections from the weight-only quantiser."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, raw_path, int8_path = fp32_path.resolve(), raw_path.resolve(), int8_path.resolve()
    source = fp32_path if recipe.startswith("matmul") else raw_path
    matmuls = [n.name for n in onnx.load(str(source), load_external_data=False).graph.node if n.op_type == "MatMul"]
    exclude = _excluded(matmuls, recipe)
    if recipe.startswith(("static", "mixed")):
        with _quiet_quantiser(int8_path.parent):
            _quantise_static(raw_path, int8_path, exclude, calibration)
        if recipe.startswith("mixed"):  # the left-out MatMuls with constant weights go weight-only
            _quantise_weight_only(int8_path, int8_path, block_size=128)
        return
    if recipe.startswith("weight_only_block"):
        _quantise_weight_only(raw_path, int8_path, block_size=int(recipe.removeprefix("weight_only_block")))
        return
    # The fused graph has contrib ops (Attention, SkipLayerNorm) that shape inference can't type.
    with _quiet_quantiser(int8_path.parent):
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_exclude=exclude,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _quantise_static(raw_path: Path, int8_path: Path, exclude: list[str], calibration) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(list(calibration()))

        def get_next(self):
            return next(self.feeds, None)

    prepared = raw_path.with_name("prepared.onnx")
    # Symbolic shape inference does not finish on the exported graph; ONNX shape inference does.
    quant_pre_process(str(raw_path), str(prepared), skip_symbolic_shape=True)
    try:
        # MinMax: the percentile and entropy calibrators need equal shapes across calibration
        # batches, which texts of different lengths do not have.
        quantize_static(
            str(prepared),
            str(int8_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)


def _quantise_weight_only(source: Path, int8_path: Path, block_size: int) -> None:
    """8-bit symmetric weights per block of ``block_size`` input features; accuracy level 4 runs
    the product in int8 with each activation row quantised per block (row-local, so batch-mates
    never change a text's scores). MatMuls without a constant weight (already quantised, or
    activation by activation) are left as they are."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=8)
    quantiser = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    quantiser_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantiser_log.level
    quantiser_log.setLevel(logging.WARNING)  # it logs two lines per MatMul at INFO
    try:
        quantiser.process()
    finally:
        quantiser_log.setLevel(level)
    quantiser.model.save_model_to_file(str(int8_path), False)


@contextmanager
def _quiet_quantiser(workdir: Path):
    """ONNX Runtime's quantiser logs a pre-processing hint on the root logger at every call; the
    static recipes do pre-process, and the dynamic ones work on a graph the hint does not fit.
    Its symbolic shape inference also drops scratch files into the working directory, so it runs
    in the export's own work directory."""
    root = logging.getLogger()

    def hint(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root.addFilter(hint)
    try:
        with chdir(workdir):
            yield
    finally:
        root.removeFilter(hint)


def _calibrate(model, tokenizer, max_length: int, dev, y_test, test_logits: np.ndarray, log) -> tuple[float, dict]:
    """Temperature fitted on the dev split (never the test split), and the test ECE before and after."""
    dev = dev[:CALIBRATION_DEV_LIMIT]
    dev_logits = predict_logits(model, tokenizer, [e.text for e in dev], max_length)
    temperature = fit_temperature(dev_logits, [LABEL_TO_ID[e.label] for e in dev])
    y_test = np.asarray(y_test)
    report = {
        "temperature": temperature,
        "dev_examples": len(dev),
        "test_ece_before": expected_calibration_error(softmax(test_logits), y_test),
        "test_ece_after": expected_calibration_error(softmax(test_logits / temperature), y_test),
    }
    log("calibration: " + json.dumps(report))
    return temperature, report


def export(
    checkpoint: Path | str,
    output: Path | str,
    *,
    opset: int = 17,
    model_version: str | None = None,
    parity_datasets: list[str] | None = None,
    parity_limit: int | None = None,
    max_logit_diff: float = 1e-3,
    min_int8_agreement: float = 0.99,
    max_int8_f1_drop: float = 0.01,
    log=print,
) -> Bundle:
    """Checkpoint -> bundle: ONNX fp32/fp16/INT8, parity-checked on the test split against the
    checkpoint, temperature-calibrated on dev. Written to a sibling folder and renamed into place,
    so a failed export leaves no bundle."""
    checkpoint, output = Path(checkpoint), Path(output)
    model, tokenizer, meta = SentimentClassifier.load(checkpoint)
    parts = _split_of(meta, parity_datasets)
    test = parts.test[:parity_limit] if parity_limit else parts.test
    heads = _head_splits_of(meta) if model.heads else None

    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        raw = work / "raw.onnx"
        log(f"exporting {checkpoint} to ONNX (opset {opset})")
        _export_onnx(model, tokenizer, raw, opset)
        log("optimising the graph (ONNX Runtime transformer fusions) and converting to fp16")
        _optimise(raw, model.encoder.config, work / VARIANT_FILES["fp32"], work / VARIANT_FILES["fp16"])
        tokenizer.save_pretrained(work)
        (work / "labels.json").write_text(json.dumps(list(LABELS)))
        version = model_version or (
            datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + sha256_of(work / VARIANT_FILES["fp32"])[:8]
        )
        manifest = _manifest(meta, version, opset)
        if heads:  # temperatures 1 until calibrated: parity compares raw logits
            manifest["heads"] = {
                "topic": {"labels": list(model.heads["topics"]), "temperature": 1.0},
                "entity": {"labels": list(LABELS), "pooling": model.heads["entity_pooling"], "temperature": 1.0},
            }
        write_manifest(work, manifest)  # provisional, so the parity run can open the bundle

        log(f"checking parity on {len(test)} test examples")
        torch_logits = predict_logits(model, tokenizer, [e.text for e in test], meta["max_length"])
        check = _ParityCheck(work, test, torch_logits, log)
        if heads:
            check.add_heads(model, tokenizer, heads, meta["max_length"], parity_limit)
        failures = check.onnx_variants(max_logit_diff)
        calibration = _calibration_source(tokenizer, parts.train, meta["max_length"], heads=heads is not None)
        failures += check.int8(raw, calibration, min_int8_agreement, max_int8_f1_drop)
        check.parity["passed"] = not failures
        log("parity: " + json.dumps(check.parity))
        if failures:
            raise ExportError("parity failed: " + "; ".join(failures))

        raw.unlink()  # the static recipes' source, not part of the bundle
        manifest["cpu_variant"], check.parity["cpu_msgs_per_s"] = _faster_on_cpu(work, check.texts)
        log(f"CPU variant: {manifest['cpu_variant']} ({check.parity['cpu_msgs_per_s']} msg/s)")
        manifest["temperature"], manifest["calibration"] = _calibrate(
            model, tokenizer, meta["max_length"], parts.dev, check.y_true, check.variants["fp32"], log
        )
        if heads:
            manifest["heads"] = _calibrate_heads(model, tokenizer, heads, meta, check, log)
        manifest["parity"] = check.parity
        manifest["metrics"] = {
            "test": {
                name: {k: v for k, v in m.items() if k not in ("predictions", "per_class")}
                for name, m in check.metrics.items()
            },
            "dev": _without_predictions(meta.get("dev_metrics", {})),
        }
        write_manifest(work, manifest)
        if output.exists():
            shutil.rmtree(output)
        work.rename(output)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    from pipeline.bundle import open_bundle

    return open_bundle(output)


CPU_SPEED_TEXTS = 512
CPU_SPEED_MARGIN = 1.05  # fp32 must beat INT8 by this much to be chosen (INT8 is 4x smaller)


def _faster_on_cpu(work: Path, texts: list[str], repeats: int = 3) -> tuple[str, dict[str, float]]:
    """("int8" or "fp32", msg/s of each): the bundle's default CPU variant. A static INT8 model
    runs about twice as fast as fp32, but a weight-only one can run slower (benchmarks.md),
    so export times both as the worker runs them: its inference threads, batches of 32, every
    head, medians of alternating runs."""
    import statistics
    import time

    from pipeline.classify import worker_inference_threads

    bundle = Bundle(work, json.loads((work / "manifest.json").read_text()))
    sample = texts[:CPU_SPEED_TEXTS]
    threads = worker_inference_threads()
    classifiers = {
        v: Classifier(bundle, variant=v, providers=["CPUExecutionProvider"], intra_op_threads=threads)
        for v in ("int8", "fp32")
    }
    rates: dict[str, list[float]] = {v: [] for v in classifiers}
    for _ in range(repeats):
        for variant, classifier in classifiers.items():
            started = time.perf_counter()
            for i in range(0, len(sample), 32):
                batch = sample[i : i + 32]
                classifier.infer(batch, [[] for _ in batch])
            rates[variant].append(len(sample) / (time.perf_counter() - started))
    medians = {v: round(statistics.median(r), 1) for v, r in rates.items()}
    return ("fp32" if medians["fp32"] > CPU_SPEED_MARGIN * medians["int8"] else "int8"), medians


def _without_predictions(metrics: dict) -> dict:
    return {
        k: _without_predictions(v) if k == "heads" or isinstance(v, dict) and "predictions" in v else v
        for k, v in metrics.items()
        if k != "predictions"
    }


def _head_splits_of(meta: dict) -> HeadSplits:
    """The checkpoint's topic and entity splits (same files and seed as training)."""
    files = meta["data"]["heads"]["files"]
    missing = [f for kind in files.values() for f in kind if not Path(f).exists()]
    if missing:
        raise ExportError(f"the heads' data {missing} not found (needed for their parity and calibration)")
    return load_head_splits(
        list(files["topic"]),
        list(files["entity"]),
        meta["data"]["split_seed"],
        meta["config"].get("skip_bad_rows", False),
    )


def _calibrate_heads(model, tokenizer, heads: HeadSplits, meta: dict, check, log) -> dict:
    """The manifest's ``heads``: labels, and a temperature per head fitted on its dev part."""
    from pipeline.schemas import TOPICS

    texts, spans, topic_ids, entity_ids = head_eval_set(heads, "dev", CALIBRATION_DEV_LIMIT)
    _, topic_logits, entity_logits = predict_heads(model, tokenizer, texts, spans, meta["max_length"])
    topic_t = fit_temperature(topic_logits[: len(topic_ids)], topic_ids)
    entity_t = fit_temperature(np.concatenate(entity_logits[len(topic_ids) :]), entity_ids)
    log(f"heads calibration: topic temperature {topic_t:.3f}, entity temperature {entity_t:.3f}")
    return {
        "topic": {"labels": list(meta["heads"].get("topics", TOPICS)), "temperature": topic_t},
        "entity": {"labels": list(LABELS), "pooling": meta["heads"]["entity_pooling"], "temperature": entity_t},
    }


def _split_of(meta: dict, parity_datasets: list[str] | None):
    """The checkpoint's own train/dev/test split (same files, columns and seed as training)."""
    datasets = parity_datasets or list(meta["data"]["files"])
    missing = [d for d in datasets if not Path(d).exists()]
    if missing:
        raise ExportError(f"parity data {missing} not found; pass --parity-dataset PATH")
    columns = {k: meta["config"][k] for k in ("text_column", "label_column") if k in meta["config"]}
    return split(
        load_datasets(datasets, skip_bad_rows=meta["config"].get("skip_bad_rows", False), **columns),
        seed=meta["data"]["split_seed"],
    )


def _manifest(meta: dict, version: str, opset: int) -> dict:
    return {
        "model_version": version,
        "base_model": meta["base_model"],
        "labels": list(LABELS),
        "max_length": meta["max_length"],
        "onnx_inputs": [*ONNX_INPUTS, *([MENTION_INPUT] if meta.get("heads") else [])],
        "onnx_outputs": list(HEAD_OUTPUTS) if meta.get("heads") else ["logits"],
        "opset": opset,
        "training_data": [{"path": p, "sha256": h} for p, h in meta["data"]["files"].items()],
        "split_seed": meta["data"]["split_seed"],
        "split": {
            k: meta["data"][k] for k in ("test_size", "dev_size", "sizes", "duplicates_removed", "conflicting_removed")
        },
        "training": {
            "config": meta["config"],
            "epoch": meta.get("epoch"),
            "history": [{k: v for k, v in h.items() if k != "losses"} for h in meta.get("history", [])],
        },
        "distillation": meta.get("distillation"),
        "heads_data": meta["data"].get("heads"),  # the topic and entity files, their split and sizes
    }


def _calibration_source(tokenizer, train, max_length: int, heads: bool = False):
    """A callable giving the static INT8 recipes their calibration batches (training texts; the
    heads' MatMuls stay fp32, so an empty mention mask serves)."""
    rng = np.random.default_rng(0)
    picked = rng.choice(len(train), size=min(CALIBRATION_EXAMPLES, len(train)), replace=False)
    texts = [train[int(i)].text for i in picked]
    input_names = [n for n in ONNX_INPUTS if n in tokenizer("x")] + ([MENTION_INPUT] if heads else [])
    return lambda: _calibration_batches(tokenizer, texts, max_length, input_names)


class _ParityCheck:
    """Each ONNX variant of the provisional bundle in ``work`` against the checkpoint's logits on
    the test examples; collects per-variant metrics and the manifest's ``parity`` record."""

    def __init__(self, work: Path, test, torch_logits, log):
        self.work, self.log = work, log
        self.texts = [e.text for e in test]
        self.y_true = [LABEL_TO_ID[e.label] for e in test]
        self.torch_logits = torch_logits
        self.variants: dict[str, np.ndarray] = {}
        self.metrics: dict[str, dict] = {}
        self.parity: dict = {"examples": len(self.texts)}
        self.head_set = None  # (texts, spans, topic ids, entity ids) of the heads' test parts
        self.head_variants: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # variant -> topic, entity logits

    def add_heads(self, model, tokenizer, heads: HeadSplits, max_length: int, limit: int | None) -> None:
        """Also check the topic and entity heads, on their own test parts."""
        self.head_set = head_eval_set(heads, "test", limit)
        texts, spans, topic_ids, _ = self.head_set
        _, topic, entity = predict_heads(model, tokenizer, texts, spans, max_length)
        self.head_variants["torch"] = (topic[: len(topic_ids)], np.concatenate(entity[len(topic_ids) :]))
        self._head_metrics("torch")
        self.parity["head_examples"] = {"topic": len(topic_ids), "entity": len(self.head_set[3])}

    def _head_metrics(self, variant: str) -> None:
        from pipeline.schemas import TOPICS

        _, _, topic_ids, entity_ids = self.head_set
        topic, entity = self.head_variants[variant]
        self.metrics[f"{variant}_topic"] = classification_metrics(topic_ids, topic, labels=TOPICS)
        self.metrics[f"{variant}_entity"] = classification_metrics(entity_ids, entity)

    def run(self, variant: str) -> np.ndarray:
        bundle = Bundle(self.work, json.loads((self.work / "manifest.json").read_text()))
        classifier = Classifier(bundle, variant=variant, providers=["CPUExecutionProvider"])
        logits = classifier.logits(self.texts)
        self.variants[variant] = logits
        self.metrics[variant] = classification_metrics(self.y_true, logits)
        if self.head_set:
            texts, spans, topic_ids, _ = self.head_set
            _, topic, entity = classifier.head_logits(texts, spans)
            self.head_variants[variant] = (topic[: len(topic_ids)], np.concatenate(entity[len(topic_ids) :]))
            self._head_metrics(variant)
        return logits

    def _agreement(self, variant: str) -> float:
        return float((self.variants[variant].argmax(1) == self.variants["fp32"].argmax(1)).mean())

    def _head_parity(self, variant: str, against: str) -> dict:
        """Each head's largest logit difference and label agreement, ``variant`` against ``against``."""
        out = {}
        for name, ours, theirs in zip(
            ("topic", "entity"), self.head_variants[variant], self.head_variants[against], strict=True
        ):
            out[name] = {
                "max_abs_logit_diff": float(np.abs(ours - theirs).max()) if len(ours) else 0.0,
                "label_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean()) if len(ours) else 1.0,
            }
        return out

    def onnx_variants(self, max_logit_diff: float) -> list[str]:
        """fp32 against torch (the failures), fp16 against fp32 (recorded where CPU kernels exist)."""
        self.metrics["torch"] = classification_metrics(self.y_true, self.torch_logits)
        fp32 = self.run("fp32")
        self.parity["fp32_max_abs_logit_diff"] = float(np.abs(fp32 - self.torch_logits).max())
        failures = []
        if self.head_set:
            self.parity["fp32_heads"] = self._head_parity("fp32", "torch")
            for name, record in self.parity["fp32_heads"].items():
                if record["max_abs_logit_diff"] > max_logit_diff:
                    diff = record["max_abs_logit_diff"]
                    failures.append(f"fp32 ONNX {name} head differs from torch by {diff:.2e} > {max_logit_diff:.0e}")
        try:
            fp16 = self.run("fp16")
            self.parity["fp16_max_abs_logit_diff"] = float(np.abs(fp16 - fp32).max())
            self.parity["fp16_label_agreement"] = self._agreement("fp16")
        except Exception as exc:  # some fp16 kernels exist only on GPU providers
            self.log(f"fp16 parity not measured on CPU: {exc}")
        if self.parity["fp32_max_abs_logit_diff"] > max_logit_diff:
            diff = self.parity["fp32_max_abs_logit_diff"]
            failures.append(f"fp32 ONNX differs from torch by {diff:.2e} > {max_logit_diff:.0e}")
        return failures

    def int8(self, raw: Path, calibration, min_agreement: float, max_f1_drop: float) -> list[str]:
        """The first INT8 recipe that keeps parity; the last one's failures if none does."""
        failures: list[str] = []
        for recipe in INT8_RECIPES:
            self.log(f"quantising to INT8 ({recipe})")
            _quantise(self.work / VARIANT_FILES["fp32"], raw, self.work / VARIANT_FILES["int8"], recipe, calibration)
            self.run("int8")
            agreement = self._agreement("int8")
            drop = self.metrics["fp32"]["macro_f1"] - self.metrics["int8"]["macro_f1"]
            self.parity.update(int8_recipe=recipe, int8_label_agreement=agreement, int8_macro_f1_drop=drop)
            failures = []
            if agreement < min_agreement:
                failures.append(f"INT8 agrees with fp32 on {agreement:.2%} < {min_agreement:.0%} of labels")
            if drop > max_f1_drop:
                failures.append(f"INT8 loses {drop:.4f} macro-F1 > {max_f1_drop}")
            if self.head_set:
                failures += self._int8_heads(min_agreement, max_f1_drop)
            if not failures:
                return []
            self.log(f"INT8 recipe {recipe} failed parity: {'; '.join(failures)}")
        return failures

    def _int8_heads(self, min_agreement: float, max_f1_drop: float) -> list[str]:
        """The topic and entity heads hold INT8 to the message head's standard, with twice its
        macro-F1 allowance for the topic head (20 classes, a few with under 10 test texts)."""
        self.parity["int8_heads"] = record = self._head_parity("int8", "fp32")
        failures = []
        for name, allowance in (("topic", 2 * max_f1_drop), ("entity", max_f1_drop)):
            drop = self.metrics[f"fp32_{name}"]["macro_f1"] - self.metrics[f"int8_{name}"]["macro_f1"]
            record[name]["macro_f1_drop"] = drop
            if record[name]["label_agreement"] < min_agreement:
                failures.append(f"INT8 {name} head agrees with fp32 on {record[name]['label_agreement']:.2%} of labels")
            if drop > allowance:
                failures.append(f"INT8 {name} head loses {drop:.4f} macro-F1 > {allowance}")
        return failures
