# The README's two commands: `make demo` (the main job) and `make test`.
# Each creates its own virtualenv in .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test check lint demo bench clean node

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Real third-party MCP servers (pinned in package-lock.json) for the integration tests.
node: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --silent && touch $@; \
	else echo "npm not found: the tests against real npm MCP servers will be skipped"; fi

test: install node
	$(PY) -m pytest -q $(PYTEST_ARGS)

check: install
	$(VENV)/bin/ruff check mcpfw tests bench fixtures
	$(VENV)/bin/ruff format --check mcpfw tests bench fixtures
	$(VENV)/bin/mypy

demo: install
	$(PY) -m mcpfw.demo

bench: install node
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) node_modules .demo .pytest_cache .mypy_cache .ruff_cache
