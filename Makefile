# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHECKOV_VENV := .venv-checkov

.PHONY: setup demo test lint checkov pytest bench clean browser native package fuzz

$(BIN)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PY) >/dev/null || (apt-get update && apt-get install -y python3 python3-venv)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

localdev/node_modules/.installed: localdev/package.json localdev/package-lock.json
	@command -v npm >/dev/null || (apt-get update && apt-get install -y nodejs npm)
	npm ci --prefix localdev --no-audit --no-fund --loglevel=error
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

# The fast path's C kernels (shared/planning/native): a plain C compiler is all they need. Without the library the
# app runs the same on the Arrow path, at about half the speed.
NATIVE := shared/planning/native/libfastpath.so
$(NATIVE): shared/planning/native/fastpath.c
	@command -v cc >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev)
	cc -O2 -std=c11 -Wall -Wextra -Werror -fPIC -shared -DSOURCE_SHA256='"'$$(sha256sum $< | cut -c1-64)'"' -o $@ $<

native: $(NATIVE)

# The folder that is published (docs/OPERATIONS.md): the app alone, with the kernels built here (Linux x64, C library
# symbols only) beside their source, whose SHA-256 the loader checks. Azure's remote build adds requirements.txt.
# `python -m localdev.package check dist/app` installs a copy as the remote build does and checks it.
DIST ?= dist
package: $(NATIVE)
	rm -rf $(DIST)/app
	mkdir -p $(DIST)/app
	cp -r function_app.py host.json requirements.txt functions shared $(DIST)/app/
	find $(DIST)/app \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
	echo "$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)+$$(git describe --always --dirty 2>/dev/null || echo unknown)" \
		> $(DIST)/app/VERSION

# The kernels under AddressSanitizer and UndefinedBehaviorSanitizer, fuzzed against the Python paths for
# SECONDS (tests/fuzz_native.py; a sanitizer report or a difference fails). Run it whenever fastpath.c changes.
SECONDS ?= 60
FUZZ_DIR := .fuzz
FUZZ_LIB := $(FUZZ_DIR)/libfastpath.so
$(FUZZ_LIB): shared/planning/native/fastpath.c
	mkdir -p $(FUZZ_DIR) && cp $< $(FUZZ_DIR)/fastpath.c
	cc -O1 -g -std=c11 -Wall -Wextra -Werror -fPIC -shared -fno-omit-frame-pointer \
		-fsanitize=address,undefined -fno-sanitize-recover=all \
		-DSOURCE_SHA256='"'$$(sha256sum $< | cut -c1-64)'"' -o $@ $(FUZZ_DIR)/fastpath.c

fuzz: $(BIN)/.installed $(FUZZ_LIB)
	LD_PRELOAD=$$(cc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 FASTPATH_LIBRARY=$(FUZZ_LIB) \
		$(BIN)/python -m tests.fuzz_native --seconds $(SECONDS) $(if $(SEED),--seed $(SEED))

setup: $(BIN)/.installed localdev/node_modules/.installed $(NATIVE)

demo: setup
	$(BIN)/python -m localdev demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

checkov: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov -d infra --framework bicep --quiet --compact --skip-download

# Debian's Chromium and its driver, for the browser test of the run-history page.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

pytest: setup browser $(CHECKOV_VENV)/.installed
	$(BIN)/python -m pytest -q

test: setup lint checkov pytest

bench: setup
	$(BIN)/python -m bench.bench_plan
	$(BIN)/python -m bench.bench_pipeline

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) localdev/node_modules .localdev $(NATIVE) $(FUZZ_DIR) dist
