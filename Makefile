# The two commands a fresh machine needs (see README.md).
PYTHON ?= python3

.PHONY: setup demo test test-unit test-integration stack-up stack-down

setup:
	bash deploy/local/setup.sh

# Everything in one command: install, start the stack, train (cached), replay, live view, report.
demo: setup
	$(PYTHON) -m pipeline.cli demo

# Unit tests need nothing; integration tests start the local stack themselves (fixture).
test: setup
	$(PYTHON) -m pytest tests

test-unit: setup
	$(PYTHON) -m pytest tests/unit

test-integration: setup
	$(PYTHON) -m pytest tests/integration

stack-up: setup
	finsent stack up

stack-down:
	finsent stack down
