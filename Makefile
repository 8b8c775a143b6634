# The two commands of the README: `make run` and `make test`.
VENV   := .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv browser run test lint format unit bench bench-peers clean asyncapi

# The environment: created when missing, reinstalled when the dependencies change.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The browser of the dashboard's tests (tests/e2e/test_dashboard.py): Debian's chromium, since
# Playwright's own browser downloads are not reachable from every machine that runs the tests.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { echo "installing chromium (Debian) for the dashboard's browser tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
	  || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }; }

# The whole bus on the local RabbitMQ, SQLite by default, API on http://127.0.0.1:8008.
run: venv
	RELAY_DEV_MODE=$${RELAY_DEV_MODE:-true} $(BIN)/convbus up

# The benchmark's standard cases on a bus of its own (local RabbitMQ and PostgreSQL, cleaned up
# after). Options: BENCH_ARGS="--children 2 --sqlite --tasks N --rate R" (or --catchup/--memory N).
bench: venv
	$(BIN)/python scripts/bench_local.py $(BENCH_ARGS)

# The bus side by side with FastAPI + Dramatiq and FastAPI + Celery on this machine's RabbitMQ
# and PostgreSQL (scripts/bench_peers.py); the peers get a venv of their own. Options:
# BENCH_ARGS="--rounds R --tasks N --concurrency C --only bus,dramatiq,celery".
PEERS_STAMP := .venv-peers/.installed-stamp
$(PEERS_STAMP): scripts/peers/requirements.txt
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/python -m pip install -q -r scripts/peers/requirements.txt
	touch $(PEERS_STAMP)

bench-peers: venv $(PEERS_STAMP)
	$(BIN)/python scripts/bench_peers.py $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Unit tests only: no broker, no database.
unit: venv
	$(BIN)/pytest -m "not integration"

# The slowest tests are listed at the end: the whole run should stay near 20 minutes.
test: lint browser
	$(BIN)/pytest --durations=20

# docs/asyncapi.json, again from the models and the topology (a test fails until it is current).
asyncapi: venv
	$(BIN)/convbus asyncapi > docs/asyncapi.json

clean:
	rm -rf $(VENV) .venv-peers .pytest_cache .mypy_cache .ruff_cache convbus.db*
