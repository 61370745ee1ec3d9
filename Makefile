# The two commands a fresh machine needs (see README.md).
PYTHON ?= python3

.PHONY: setup lint demo test test-unit test-integration drill stack-up stack-down

setup:
	bash deploy/local/setup.sh

# Everything in one command: install, start the stack, train (cached), replay, live view, report.
demo: setup
	$(PYTHON) -m pipeline.cli demo

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

# The full fault drill (about 10 min here): 20,000 messages, 3 worker SIGKILLs, a broker restart,
# Elasticsearch down for 30 s. DRILL_BUNDLE: any bundle (default: the one `make demo` trains); data from data/.
DRILL_BUNDLE ?= $(HOME)/.cache/finsent/models/quick/bundle
drill: setup
	$(PYTHON) -m tests.integration.drill --bundle $(DRILL_BUNDLE) --messages 20000 --kills 3

stack-up: setup
	finsent stack up

stack-down:
	finsent stack down
