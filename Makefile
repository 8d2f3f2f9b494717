# The two commands of the README. Each runs the idempotent set-up first.
.PHONY: quickstart test setup

setup:
	@bash scripts/setup.sh

quickstart: setup
	.venv/bin/matloop run campaigns/quickstart.yaml

test: setup
	.venv/bin/python -m pytest -q
