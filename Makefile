# The few verbs people type. Each creates .venv on first use and installs the project
# into it with pip (pip picks up a locally provided torch wheel; other installers may not).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_CONFIG := $(or $(WMPD_CONFIG),$(wildcard $(HOME)/.config/wmpd/config.yaml),config.example.yaml)

.PHONY: install run index test lint pytest system-deps photos bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: the daemon in the foreground on your config (or config.example.yaml)
run: $(STAMP)
	@echo "wmpd: using config $(RUN_CONFIG); the search page is on http://127.0.0.1:8756/"
	$(BIN)/wmpd --config $(RUN_CONFIG) run

## index: one indexing pass without the daemon
index: $(STAMP)
	$(BIN)/wmpd --config $(RUN_CONFIG) index
	@echo 'search with: $(BIN)/wmpd --config $(RUN_CONFIG) search "a dog on grass"'

## test: lint, type-check and the whole test suite (what CI runs)
test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check wmpd tests bench integrations
	$(BIN)/ruff format --check wmpd tests bench integrations
	$(BIN)/mypy

pytest: $(STAMP) system-deps photos
	HF_HUB_OFFLINE=1 $(BIN)/pytest

# Real photographs (freely licensed, from Debian and PyPI packages) for the
# preprocessing-equivalence tests; those tests skip and say why when the fetch fails.
FETCH_PHOTOS ?= ../shared/fetch-photos.sh
photos:
	@if [ ! -d photos/hires ] || [ -z "$$(ls -A photos/hires 2>/dev/null)" ]; then \
		if [ -f "$(FETCH_PHOTOS)" ]; then \
			bash "$(FETCH_PHOTOS)" photos || echo "note: could not fetch the test photos"; \
		else \
			echo "note: $(FETCH_PHOTOS) not found; the real-photo tests will be skipped"; \
		fi; \
	fi

# Chromium drives the page tests and systemd-analyze checks the unit file. Installed
# from Debian when missing and we may (root with apt-get); otherwise those tests skip
# and say why.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v kill >/dev/null 2>&1 || missing="$$missing procps"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing:$$missing"; \
		apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then \
		echo "note:$$missing not installed; the tests that need them will be skipped"; \
	fi

## bench: the benchmarks (bench-quick ends in about a minute)
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/run_all.py

bench-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
