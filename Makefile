# The two commands a fresh machine needs (see README.md).
PYTHON ?= python3

.PHONY: setup lint lock demo model test test-unit test-integration drill stack-up stack-down

setup:
	bash deploy/local/setup.sh

# Everything in one command: install, start the stack, train (cached), replay, live view, report.
demo: setup
	$(PYTHON) -m pipeline.cli demo

# The default model at models/default: the default recipe (message sentiment from Financial
# PhraseBank 50Agree + the Twitter Financial News sentiment train file, distilled from a 110M
# teacher's soft labels; topics from the Twitter Financial News topic file; entity sentiment from
# SEntFiN), ONNX export with every head's parity checks, then each test split evaluated
# (reports/default-*.json and confusion matrices). About an hour on 2 cores.
MODEL_DIR ?= models/default
# The 110M teacher's scores (docs/model.md says how they were made and how to remake them).
SOFT_LABELS ?= data/soft_labels/mpnet-default.jsonl.gz
model: setup
	$(PYTHON) -m pipeline.cli train -o runs/default --epochs 3 --soft-labels $(SOFT_LABELS)
	$(PYTHON) -m pipeline.cli export runs/default/best -o $(MODEL_DIR)
	$(PYTHON) -m pipeline.cli evaluate $(MODEL_DIR) --split test --json reports/default-fpb.json \
		-d data/financial_phrasebank/Sentences_50Agree.txt
	$(PYTHON) -m pipeline.cli evaluate $(MODEL_DIR) --split test --json reports/default-tweets.json \
		-d data/twitter_financial_news_sentiment/sent_train.csv
	$(PYTHON) -m pipeline.cli evaluate $(MODEL_DIR) --split test --json reports/default-topics.json \
		--head topic -d data/twitter_financial_news_topic/topic_train.csv
	$(PYTHON) -m pipeline.cli evaluate $(MODEL_DIR) --split test --json reports/default-entities.json \
		--head entity -d data/sentfin/SEntFiN-dev.csv

# Pin the worker's run-time dependencies as installed here (the images and setup install from it).
lock:
	$(PYTHON) deploy/docker/lock.py

# ruff lint and format check (pyproject.toml's [tool.ruff]).
lint: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# Unit tests need nothing; integration tests start the local stack themselves (fixture).
test: lint
	$(PYTHON) -m pytest tests

test-unit: setup
	$(PYTHON) -m pytest tests/unit

test-integration: setup
	$(PYTHON) -m pytest tests/integration

# The full fault drill (about 5 min here): 20,000 messages, 3 worker SIGKILLs, the broker down for
# 60 s, Elasticsearch down for 30 s. DRILL_BUNDLE: any bundle (default: the one `make demo` trains); data from data/.
DRILL_BUNDLE ?= $(HOME)/.cache/finsent/models/quick/bundle
drill: setup
	$(PYTHON) -m tests.integration.drill --bundle $(DRILL_BUNDLE) --messages 20000 --kills 3 --broker-outage-s 60

stack-up: setup
	finsent stack up

stack-down:
	finsent stack down
