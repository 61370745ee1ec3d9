"""Loaders, label mapping, de-duplication and splits, on the real files and on broken ones."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from training.data import BadDataError, load_datasets, load_file, phrasebank_agreement, split
from training.metrics import accuracy_by_group


def test_phrasebank_50agree(data_dir: Path):
    examples = load_file(data_dir / "financial_phrasebank/Sentences_50Agree.txt")
    assert len(examples) == 4846
    assert Counter(e.label for e in examples) == {"neutral": 2879, "positive": 1363, "negative": 604}
    # latin-1: the mis-encoded company names decode instead of failing.
    assert any("+ñ" in e.text for e in examples)


def test_phrasebank_agreement_is_the_strictest_release_file_holding_a_sentence(data_dir: Path, tmp_path: Path):
    folder = data_dir / "financial_phrasebank"
    levels = phrasebank_agreement(folder / "Sentences_50Agree.txt")
    unique = {name: {e.text for e in load_file(folder / f"Sentences_{name}.txt")} for name in ("AllAgree", "75Agree")}
    assert set(levels) == {e.text for e in load_file(folder / "Sentences_50Agree.txt")}
    assert {t for t, level in levels.items() if level == "100 %"} == unique["AllAgree"]
    assert {t for t, level in levels.items() if level == "75-99 %"} == unique["75Agree"] - unique["AllAgree"]
    assert set(levels.values()) == {"100 %", "75-99 %", "66-74 %", "50-65 %"}
    assert set(phrasebank_agreement(folder / "Sentences_66Agree.txt").values()) == {"100 %", "75-99 %", "66-74 %"}
    # Not a release file, or a release file without its stricter siblings: no levels.
    assert phrasebank_agreement(data_dir / "twitter_financial_news_sentiment/sent_train.csv") == {}
    alone = tmp_path / "Sentences_75Agree.txt"
    alone.write_bytes((folder / "Sentences_75Agree.txt").read_bytes())
    assert phrasebank_agreement(alone) == {}


def test_accuracy_by_group_in_the_given_order_without_empty_or_unknown_groups():
    result = accuracy_by_group([0, 1, 2, 1, 0], [0, 2, 2, 1, 1], ["b", "a", "a", None, "b"], order=["a", "b", "c"])
    assert list(result) == ["a", "b"]
    assert result == {"a": {"n": 2, "accuracy": 0.5}, "b": {"n": 2, "accuracy": 0.5}}


def test_twitter_labels_are_mapped(data_dir: Path):
    examples = load_file(data_dir / "twitter_financial_news_sentiment/sent_train.csv")
    assert len(examples) == 9543
    assert Counter(e.label for e in examples) == {"neutral": 6178, "positive": 1923, "negative": 1442}
    assert examples[0].label == "negative"  # 0 = bearish


def test_duplicates_removed_and_conflicts_dropped(data_dir: Path):
    dataset = load_datasets([data_dir / "financial_phrasebank/Sentences_50Agree.txt"])
    # 8 extra copies, two of them with conflicting labels (README of the data).
    assert dataset.conflicting_removed == 4
    assert dataset.duplicates_removed + dataset.conflicting_removed >= 8
    assert len({e.text for e in dataset.examples}) == len(dataset.examples)
    assert set(dataset.files.values()) == {"13388b8bf2f878c68fb4d47564fa0072756eb4e9ba4a16467d6d7f0a29a6a742"}


def test_split_is_deterministic_stratified_and_disjoint(data_dir: Path):
    dataset = load_datasets([data_dir / "financial_phrasebank/Sentences_50Agree.txt"])
    a, b = split(dataset, seed=0), split(dataset, seed=0)
    assert [e.text for e in a.test] == [e.text for e in b.test]
    assert [e.text for e in split(dataset, seed=1).test] != [e.text for e in a.test]
    train, dev, test = ({e.text for e in part} for part in (a.train, a.dev, a.test))
    assert not (train & dev or train & test or dev & test)
    assert len(a.test) == pytest.approx(0.2 * len(dataset.examples), abs=1)
    assert len(a.dev) == pytest.approx(0.1 * (len(dataset.examples) - len(a.test)), abs=1)
    share = lambda part: sum(e.label == "negative" for e in part) / len(part)  # noqa: E731
    assert share(a.test) == pytest.approx(share(a.train), abs=0.01)


def test_combined_files(data_dir: Path):
    dataset = load_datasets(
        [
            data_dir / "financial_phrasebank/Sentences_AllAgree.txt",
            data_dir / "twitter_financial_news_sentiment/sent_train.csv",
        ]
    )
    assert {e.source for e in dataset.examples} == {"Sentences_AllAgree.txt", "sent_train.csv"}
    assert len(dataset.files) == 2


def test_generic_csv_and_jsonl_with_column_mapping(tmp_path: Path):
    table = tmp_path / "mine.csv"
    table.write_text("headline,sentiment\nShares soar,bullish\nProfit falls,Negative\nMeeting today,neutral\n")
    examples = load_file(table, text_column="headline", label_column="sentiment")
    assert [e.label for e in examples] == ["positive", "negative", "neutral"]
    lines = tmp_path / "mine.jsonl"
    lines.write_text("\n".join(json.dumps({"body": t, "y": y}) for t, y in [("Up", "positive"), ("Down", "negative")]))
    assert [e.label for e in load_file(lines, text_column="body", label_column="y")] == ["positive", "negative"]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("a.txt", b"Fine sentence@neutral\nNo label here\n", r"a.txt:2: no '@label'"),
        ("b.txt", b"Fine@neutral\nOdd@sideways\n", r"b.txt:2: unknown label 'sideways'"),
        ("c.txt", b"Fine@neutral\n  @positive\n", r"c.txt:2: empty text"),
        ("d.csv", b'text,label\nok,0\n"bad",7\n', r"d.csv:3: unknown label '7'"),
        ("e.csv", b"body,label\nx,positive\n", r"e.csv:1: missing column 'text'"),
        ("f.csv", b"text,label\nok,positive\n\xff\xfe broken,negative\n", r"f.csv:\d+: not UTF-8"),
        ("g.jsonl", b'{"text": "ok", "label": "positive"}\n{not json\n', r"g.jsonl:2: invalid JSON"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path: Path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadDataError, match=expected):
        load_file(path)


def test_missing_file_and_skip_bad_rows(tmp_path: Path):
    with pytest.raises(BadDataError, match="nope.txt: no such file"):
        load_file(tmp_path / "nope.txt")
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"Good one@positive\nBad@sideways\nAlso bad\nGood two@negative\n")
    bad = Counter()
    examples = load_file(path, skip_bad_rows=True, bad_rows=bad)
    assert [e.text for e in examples] == ["Good one", "Good two"]
    assert sum(bad.values()) == 2 and any("unknown label" in reason for reason in bad)


def test_temperature_fit_recovers_an_overconfident_models_scale_and_lowers_calibration_error():
    import numpy as np

    from pipeline.classify import softmax
    from training.metrics import expected_calibration_error, fit_temperature, negative_log_likelihood

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=4000)
    true_logits = rng.normal(size=(4000, 3))
    true_logits[np.arange(4000), y] += 1.5
    # Labels drawn from the calibrated model, logits reported 3x too sharp.
    y = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    sharp = true_logits * 3.0
    t = fit_temperature(sharp, y)
    assert 2.5 < t < 3.5
    assert negative_log_likelihood(sharp, y, t) < negative_log_likelihood(sharp, y)
    assert expected_calibration_error(softmax(sharp / t), y) < expected_calibration_error(softmax(sharp), y) / 2
    assert fit_temperature(sharp[:0], y[:0]) == 1.0
