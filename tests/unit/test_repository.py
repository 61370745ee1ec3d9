"""The clone stands on its own: data with checksums, a licence, a version, quiet progress in logs."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import DATA_DIR
from pipeline.progress import Progress

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = "../" + "shared"  # the folder beside a developer's checkout, which a user's clone lacks


def test_every_data_file_matches_the_checksum_in_data_readme():
    readme = (DATA_DIR / "README.md").read_text()
    listed = dict(re.findall(r"`([\w.\-]+)`[^\n]*?`([0-9a-f]{64})`", readme))
    listed.update(re.findall(r"`(topic_train\.csv)`: .*?sha256\s+`([0-9a-f]{64})`", readme, flags=re.S))
    files = sorted(
        p for p in DATA_DIR.rglob("*") if p.name.startswith("Sentences_") or p.suffix == ".csv" or p.name == "LICENSE"
    )
    assert {p.name for p in files} == set(listed), "data/README.md must list every data file"
    for path in files:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == listed[path.name], f"{path} differs from data/README.md"
    assert (DATA_DIR / "financial_phrasebank" / "License.txt").read_text().strip()


def test_no_file_names_a_path_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        path = ROOT / name
        if path.suffix in (".py", ".md", ".yml", ".yaml", ".toml", ".sh", ".json", ".jsonl", "") and path.is_file():
            assert OUTSIDE not in path.read_text(errors="replace"), f"{name} names {OUTSIDE}"


def test_licence_and_version():
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert re.fullmatch(r"finsent \d+\.\d+\.\d+\S*\n", out.stdout)


def test_progress_off_a_terminal_writes_a_few_plain_lines():
    stream = io.StringIO()
    with Progress(1000, "epoch 1/1", unit="batch", stream=stream, interval_s=0.05) as bar:
        for _ in range(1000):
            bar.update()
            bar.set_postfix(loss="0.1234")
            if bar.n % 250 == 0:
                time.sleep(0.06)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 6, lines
    assert lines[-1].startswith("epoch 1/1: 1,000/1,000 (100%) batch") and lines[-1].endswith("loss=0.1234 - done")
