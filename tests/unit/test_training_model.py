"""A tiny fine-tuning run (64 examples, a few steps) end to end: loss, checkpoint, export,
parity, bundle validation, classification, evaluation and resume. CPU only, about a minute."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pipeline.bundle import BundleError, open_bundle
from pipeline.classify import Classifier, softmax
from pipeline.schemas import LABELS
from tests.conftest import TINY_INT8_AGREEMENT
from training.config import TrainConfig
from training.export import INT8_RECIPES, ExportError, _export_onnx, _quantise, export
from training.model import SentimentClassifier
from training.train import train


def test_loss_falls_and_checkpoints_are_written(tiny_run: Path):
    history = json.loads((tiny_run / "history.json").read_text())
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    meta = json.loads((tiny_run / "best" / "finsent_checkpoint.json").read_text())
    assert meta["labels"] == list(LABELS) and meta["data"]["split_seed"] == 0
    config = json.loads((tiny_run / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}


def test_bundle_has_every_file_and_parity(tiny_bundle: Path):
    bundle = open_bundle(tiny_bundle)
    manifest = bundle.manifest
    assert bundle.model_version == "tiny-1"
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx", "tokenizer.json", "labels.json"):
        assert name in manifest["files"]
    assert manifest["parity"]["fp32_max_abs_logit_diff"] <= 1e-3
    assert manifest["parity"]["int8_label_agreement"] >= TINY_INT8_AGREEMENT
    assert manifest["training_data"][0]["sha256"]
    # Calibrated on dev: the temperature the classifier applies, with the test ECE before and after.
    calibration = manifest["calibration"]
    assert manifest["temperature"] == calibration["temperature"] > 0
    assert calibration["dev_examples"] > 0
    assert 0 <= calibration["test_ece_before"] <= 1 and 0 <= calibration["test_ece_after"] <= 1
    classifier = Classifier(bundle, variant="fp32")
    texts = ["Operating profit rose", "Sales fell"]
    np.testing.assert_allclose(
        classifier.predict_proba(texts), softmax(classifier.logits(texts) / manifest["temperature"]), rtol=1e-6
    )
    # INT8 is the small one.
    assert (tiny_bundle / "model.int8.onnx").stat().st_size < 0.75 * (tiny_bundle / "model.onnx").stat().st_size


def test_bundle_classifies(tiny_bundle: Path):
    classifier = Classifier(open_bundle(tiny_bundle))
    assert classifier.variant == "int8" and classifier.provider == "CPUExecutionProvider"
    texts = ["Operating profit rose to EUR 13.1 mn", "The company laid off 200 workers", "x " * 500, "ok"]
    probs = classifier.predict_proba(texts)
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Order is preserved despite length sorting: same result one by one. (fp32: dynamic INT8 scales
    # activations per batch, so its outputs move slightly with the batch's other texts.)
    fp32 = Classifier(open_bundle(tiny_bundle), variant="fp32")
    single = np.vstack([fp32.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(single, fp32.predict_proba(texts), atol=1e-4)


def test_int8_gives_a_text_the_same_scores_whatever_its_batch(tiny_bundle: Path):
    bundle = open_bundle(tiny_bundle)
    assert bundle.manifest["parity"]["int8_recipe"] in INT8_RECIPES
    classifier = Classifier(bundle, variant="int8")
    text = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn"
    mates = [
        [text],
        [text, "The company laid off 200 workers after a weak quarter " * 3],
        ["ok", text, "Sales fell", "Net profit was EUR 2 mn"],
    ]
    scores = [classifier.predict_proba(batch)[batch.index(text)] for batch in mates]
    for other in scores[1:]:
        np.testing.assert_allclose(other, scores[0], atol=1e-6)


@pytest.mark.parametrize(
    "recipe", ["weight_only_block32", "mixed_static_weight_only", "mixed_static_weight_only_last_layer"]
)
def test_weight_only_and_mixed_int8_are_batch_independent_and_close_to_fp32(
    tiny_run: Path, tmp_path: Path, recipe: str
):
    model, tokenizer, _ = SentimentClassifier.load(tiny_run / "best")
    raw, int8 = tmp_path / "raw.onnx", tmp_path / "int8.onnx"
    _export_onnx(model, tokenizer, raw, 17)
    texts = ["Operating profit rose", "Sales fell sharply in the third quarter", "ok", "Net loss widened"] * 4

    def calibration():
        encoded = tokenizer(texts, padding=True, return_tensors="np")
        yield {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}

    _quantise(raw, raw, int8, recipe, calibration=calibration)
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert "MatMulNBits" in ops
    if recipe.startswith("mixed"):  # static where it keeps labels, weight-only where it does not
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    if recipe.endswith("_last_layer"):  # the last layer's MatMuls with weights all weight-only
        nodes = onnx.load(str(int8)).graph.node
        top = max(int(n.name.split("/layer.")[1].split("/")[0]) for n in nodes if "/layer." in n.name)
        last = [n.op_type for n in nodes if f"/layer.{top}/" in n.name and "MatMul" in n.op_type]
        assert last.count("MatMulNBits") == 6  # Q, K, V, attention out, FFN in and out (weights)
    sessions = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (raw, int8)}

    def logits(path: Path, batch: list[str]) -> np.ndarray:
        encoded = tokenizer(batch, padding=True, return_tensors="np")
        session = sessions[path]
        return session.run(None, {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()})[0]

    text = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn"
    alone = logits(int8, [text])[0]
    # Batch-mates of very different size and content leave the text's scores unchanged.
    for batch in ([text, "The company laid off 200 workers " * 4], ["ok", text, "Sales fell"]):
        np.testing.assert_allclose(logits(int8, batch)[batch.index(text)], alone, atol=1e-6)
    # Static activation scales (fixed at calibration) are coarser than per-row weight-only ones.
    reference = logits(raw, [text])[0]
    np.testing.assert_allclose(alone, reference, atol=0.05 if recipe.startswith("weight_only") else 0.1)
    assert alone.argmax() == reference.argmax()


def test_failed_parity_leaves_no_bundle(tiny_run: Path, tmp_path: Path):
    target = tmp_path / "never"
    with pytest.raises(ExportError, match="INT8 agrees with fp32"):
        export(tiny_run / "best", target, parity_limit=50, min_int8_agreement=1.01, log=lambda *_: None)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_bundle_validation_names_the_problem(tiny_bundle: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "labels.json").write_text('["negative", "neutral", "positive"] ')
    with pytest.raises(BundleError, match="checksum mismatch for labels.json"):
        open_bundle(broken)
    shutil.rmtree(broken)
    shutil.copytree(tiny_bundle, broken)
    (broken / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match="model.int8.onnx is missing"):
        open_bundle(broken)
    shutil.rmtree(broken)
    shutil.copytree(tiny_bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["format_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unknown format version 99"):
        open_bundle(broken)
    with pytest.raises(BundleError, match="no such directory"):
        open_bundle(tmp_path / "absent")


def test_evaluate_on_a_file_with_known_predictions(tiny_bundle: Path, tmp_path: Path):
    from training.evaluate import evaluate

    texts = [
        "Sales increased by 10 %",
        "Net loss widened",
        "The meeting is on Monday",
        "Shares fell sharply",
        "Record quarter for the group",
        "Dividend unchanged",
    ]
    predicted = Classifier(open_bundle(tiny_bundle)).predict_proba(texts).argmax(axis=1)
    agree, disagree = tmp_path / "agree.jsonl", tmp_path / "disagree.jsonl"
    agree.write_text(
        "\n".join(json.dumps({"text": t, "label": LABELS[p]}) for t, p in zip(texts, predicted, strict=False))
    )
    disagree.write_text(
        "\n".join(json.dumps({"text": t, "label": LABELS[(p + 1) % 3]}) for t, p in zip(texts, predicted, strict=False))
    )

    good = evaluate(tiny_bundle, [str(agree)], "all", "int8", tmp_path / "out" / "agree.json")
    assert good["metrics"]["accuracy"] == 1.0 and good["metrics"]["n"] == 6
    assert good["by_agreement"] == {}  # not Financial PhraseBank
    bad = evaluate(tiny_bundle, [str(disagree)], "all", "int8")
    assert bad["metrics"]["accuracy"] == 0.0
    assert sum(map(sum, bad["metrics"]["confusion_matrix"])) == 6
    assert (tmp_path / "out" / "agree.md").read_text().startswith("# finsent evaluation")
    assert (tmp_path / "out" / "agree.confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_an_interrupted_run(phrasebank, tmp_path: Path):
    output = tmp_path / "resumable"
    common = dict(
        datasets=[phrasebank],
        output=str(output),
        batch_size=16,
        max_examples=32,
        max_length=32,
        topic_datasets=[],
        entity_datasets=[],
    )
    train(TrainConfig(epochs=1, **common))
    first = json.loads((output / "history.json").read_text())
    train(TrainConfig(epochs=2, extra={"resume": True}, **common))
    history = json.loads((output / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first[0]
    assert history[1]["step"] == 2 * history[0]["step"]


def test_resume_mid_epoch_trains_as_if_never_interrupted(phrasebank, tmp_path: Path, monkeypatch):
    import training.train as training_module

    common = dict(datasets=[phrasebank], batch_size=16, max_examples=64, max_length=32, epochs=1)
    train(TrainConfig(output=str(tmp_path / "whole"), **common))
    whole = json.loads((tmp_path / "whole" / "history.json").read_text())[0]

    real_batches = training_module.batches

    def interrupted_after_two(*args, **kwargs):
        for index, batch in enumerate(real_batches(*args, **kwargs)):
            if index == 2:
                raise KeyboardInterrupt
            yield batch

    output = str(tmp_path / "interrupted")
    monkeypatch.setattr(training_module, "batches", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(output=output, checkpoint_minutes=0, **common))
    monkeypatch.setattr(training_module, "batches", real_batches)
    train(TrainConfig(output=output, checkpoint_minutes=0, extra={"resume": True}, **common))
    resumed = json.loads((tmp_path / "interrupted" / "history.json").read_text())[0]
    assert resumed["step"] == whole["step"] > 2  # three heads: message, topic and entity batches
    assert resumed["losses"] == whole["losses"]
    assert resumed["dev_entity_accuracy"] == whole["dev_entity_accuracy"]
    assert resumed["dev_macro_f1"] == whole["dev_macro_f1"]


def test_evaluate_test_split_refuses_data_the_model_never_saw(tiny_bundle: Path, data_dir: Path):
    from training.evaluate import evaluate

    with pytest.raises(ValueError, match="sent_train.csv was not part of this model's training data"):
        evaluate(tiny_bundle, [str(data_dir / "twitter_financial_news_sentiment/sent_train.csv")], "test", "int8")
    result = evaluate(tiny_bundle, [str(data_dir / "financial_phrasebank/Sentences_AllAgree.txt")], "test", "fp32")
    meta = json.loads((tiny_bundle / "manifest.json").read_text())
    assert result["metrics"]["n"] == meta["split"]["sizes"]["test"]
    # Every AllAgree sentence is unanimous: one agreement level, holding the whole split.
    assert result["by_agreement"] == {"100 %": {"n": result["metrics"]["n"], "accuracy": result["metrics"]["accuracy"]}}


def test_layer_wise_learning_rates_and_weight_decay_groups():
    from transformers import BertConfig, BertModel

    from training.model import SentimentClassifier
    from training.train import parameter_groups

    encoder = BertModel(
        BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=3, num_attention_heads=2, intermediate_size=16)
    )
    model = SentimentClassifier(encoder)
    config = TrainConfig(datasets=[], output="", learning_rate=1e-3, weight_decay=0.1, layer_lr_decay=0.5)
    groups = parameter_groups(model, config)
    rate_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(rate_of) == len(named)
    assert rate_of[id(model.head.weight)] == (1e-3, 0.1)
    assert rate_of[id(named["encoder.encoder.layer.2.attention.self.query.weight"])] == (5e-4, 0.1)
    assert rate_of[id(named["encoder.encoder.layer.0.output.LayerNorm.weight"])] == (1.25e-4, 0.0)
    assert rate_of[id(named["encoder.embeddings.word_embeddings.weight"])] == (6.25e-5, 0.1)
    flat = parameter_groups(model, TrainConfig(datasets=[], output="", learning_rate=1e-3))
    assert {g["lr"] for g in flat} == {1e-3}


def test_a_broken_new_bundle_is_tried_once_not_on_every_poll(tiny_bundle: Path, tmp_path: Path):
    import asyncio
    import json
    import shutil

    from pipeline.classify import ModelHolder
    from pipeline.config import load_settings

    link = tmp_path / "current"
    link.symlink_to(tiny_bundle)
    holder = ModelHolder(load_settings(model_bundle=link))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "model_version": "tiny-2"}))
    (broken / "model.int8.onnx").write_bytes(b"not a model")
    link.unlink()
    link.symlink_to(broken)
    loads = []
    original = holder._load
    holder._load = lambda: loads.append(1) or original()

    async def poll_three_times():
        return [await holder.maybe_swap(asyncio.get_running_loop(), None) for _ in range(3)]

    assert asyncio.run(poll_three_times()) == [False, False, False]
    assert len(loads) == 1 and holder.classifier.model_version == "tiny-1"


def test_a_three_head_bundle_describes_and_checks_every_head(tiny_heads_bundle: Path):
    bundle = open_bundle(tiny_heads_bundle)
    manifest = bundle.manifest
    assert manifest["onnx_inputs"][-1] == "mention_mask"
    assert manifest["onnx_outputs"] == ["logits", "topic_logits", "entity_logits"]
    from pipeline.schemas import TOPICS

    assert bundle.heads["topic"]["labels"] == list(TOPICS)
    assert bundle.heads["entity"]["labels"] == list(LABELS) and bundle.heads["entity"]["pooling"] == "mention"
    assert bundle.heads["topic"]["temperature"] > 0 and bundle.heads["entity"]["temperature"] > 0
    parity = manifest["parity"]
    for head in ("topic", "entity"):
        assert parity["fp32_heads"][head]["max_abs_logit_diff"] <= 1e-3
        assert parity["int8_heads"][head]["label_agreement"] >= TINY_INT8_AGREEMENT
        assert manifest["metrics"]["test"][f"int8_{head}"]["n"] == parity["head_examples"][head] > 0
    assert set(manifest["heads_data"]["files"]) == {"topic", "entity"}


def test_each_mention_gets_its_own_scores_in_one_pass_whatever_its_batch(tiny_heads_bundle: Path):
    classifier = Classifier(open_bundle(tiny_heads_bundle), variant="int8")
    text = "Infosys beats estimates; Wipro slumps"
    spans = [(0, 7), (25, 30)]
    alone = classifier.infer([text], [spans])
    assert alone.topics.shape == (1, 20) and alone.entities[0].shape == (2, 3)
    np.testing.assert_allclose(alone.entities[0].sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(alone.entities[0][0], alone.entities[0][1])  # the two mentions differ
    assert not alone.from_message[0].any()
    batch = classifier.infer(["Fed holds", text, "Sales fell " * 20], [[], spans, [(0, 5)]])
    np.testing.assert_allclose(batch.entities[1], alone.entities[0], atol=1e-6)
    np.testing.assert_allclose(batch.topics[1], alone.topics[0], atol=1e-6)
    # A mention truncated away (max_length 48 tokens) takes the message's scores, marked as such.
    long = "Profit fell " * 40 + "at Wipro"
    far = classifier.infer([long], [[(len(long) - 5, len(long))]])
    assert far.from_message[0].tolist() == [True]
    np.testing.assert_allclose(far.entities[0][0], far.message[0])
    # In a batch, it takes its own text's scores, and its batch-mates keep theirs.
    mixed = classifier.infer(["Fed holds", long, text], [[], [(len(long) - 5, len(long))], spans])
    assert [m.tolist() for m in mixed.from_message] == [[], [True], [False, False]]
    np.testing.assert_allclose(mixed.entities[1][0], mixed.message[1], atol=1e-6)
    np.testing.assert_allclose(mixed.entities[2], alone.entities[0], atol=1e-6)
    empty = classifier.infer([], [])
    assert empty.message.shape == (0, 3) and empty.topics.shape == (0, 20) and empty.entities == []


def test_a_bundle_with_broken_heads_is_refused(tiny_heads_bundle: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_heads_bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["heads"]["entity"]["labels"] = ["bad", "good"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="heads.entity.labels must be"):
        open_bundle(broken, verify_checksums=False)


def test_evaluate_scores_the_topic_and_entity_heads(tiny_heads_bundle: Path, tmp_path: Path):
    from training.evaluate import evaluate_head

    entities = tmp_path / "entities.csv"
    entities.write_text(
        "text,entity,label\n"
        "Infosys beats estimates; Wipro slumps,Infosys,positive\n"
        "Infosys beats estimates; Wipro slumps,Wipro,negative\n"
        "Tata Steel flat,Tata Steel,neutral\n"
    )
    result = evaluate_head(tiny_heads_bundle, [str(entities)], "entity", "all", json_out=tmp_path / "e.json")
    assert result["metrics"]["n"] == 3 and result["headlines"] == 2
    assert result["disagreeing"]["entities"] == 2 and result["disagreeing"]["headlines"] == 1
    assert (tmp_path / "e.confusion.png").stat().st_size > 0
    topics = tmp_path / "topics.csv"
    topics.write_text("text,label\nFed holds rates,1\nApple beats on earnings,Earnings\n")
    result = evaluate_head(tiny_heads_bundle, [str(topics)], "topic", "all")
    assert result["metrics"]["n"] == 2 and len(result["metrics"]["confusion_matrix"]) == 20
    with pytest.raises(ValueError, match="was not this model's topic training data"):
        evaluate_head(tiny_heads_bundle, [str(topics)], "topic", "test")
