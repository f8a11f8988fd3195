# Two commands do everything, set-up included:  `make app`  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: app test lint browser postgres

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -r requirements-dev.txt
	$(BIN)/python -m pip install -qq --no-deps -e . --config-settings editable_mode=strict
	touch $(STAMP)

app: $(STAMP)
	$(BIN)/python app.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# The browser test drives Debian's Chromium; install it when it is missing and we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed: the browser test will be skipped (apt-get install chromium)"

# The shared-cache tests start Debian's PostgreSQL server in a temporary folder.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		echo "postgresql is not installed: the PostgreSQL cache tests will be skipped (apt-get install postgresql)"

test: $(STAMP) browser postgres
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)
