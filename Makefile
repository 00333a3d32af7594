# One command each, on a fresh machine with Python 3.11+ and access to PyPI:
#   make reproduce   set up, then run every notebook in the quick profile (papermill); ONLY=00,03 for some of them
#   make test        set up, then run the test suite (unit tests + every notebook under nbval at its smoke size)
#   make check       set up, then run the quick profile and fail on any number beyond the reference runs' spread
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cropkit-installed
PROFILE ?= quick
ONLY ?=
SETUP_FREE_GIB ?= 8

.PHONY: setup reproduce test check reference lock

setup: $(STAMP)

# The lock is the whole resolved environment, so it installs with --no-deps (see pyproject.toml for why).
$(STAMP): requirements/lock.txt pyproject.toml
	@free=$$(df -Pk "$(dir $(abspath $(VENV)))" | awk 'NR == 2 {print int($$4 / 1048576)}'); \
	 [ "$$free" -ge $(SETUP_FREE_GIB) ] || { echo "setup: $$free GiB free on the disk that would hold $(VENV); the \
	locked environment (PyTorch's CUDA build) needs about $(SETUP_FREE_GIB) GiB: free some space, or set \
	VENV=<a folder on a larger disk>"; exit 1; }
	@echo "setup: creating $(VENV) and installing the locked environment (a few minutes the first time)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -qq --upgrade pip
	@$(BIN)/python -m pip install -qq --no-deps -r requirements/lock.txt
	@$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	@$(BIN)/python -m ipykernel install --sys-prefix --name cropkit --display-name "Python (cropkit)" >/dev/null
	@touch $(STAMP)
	@echo "setup: done ($$($(BIN)/python -c 'import torch; print("torch", torch.__version__)'); kernel 'cropkit' registered)"

reproduce: setup
	$(BIN)/cropkit reproduce --profile $(PROFILE) $(if $(ONLY),--only $(ONLY))

test: setup
	SMOKE_TEST=1 $(BIN)/python -m pytest

# The quick profile's numbers: the shipped foundation model against one pre-trained from scratch, then a whole
# reproduction compared with reference/$(PROFILE) (each number that moved is named).
check: setup
	$(BIN)/cropkit pretrain-fm --check
	$(BIN)/cropkit reproduce --profile $(PROFILE)
	$(BIN)/cropkit report --profile $(PROFILE) --compare results/$(PROFILE)

# Regenerate what is committed from a quick-profile run: reference records, notebook outputs, RESULTS.md, README.
reference: reproduce
	$(BIN)/cropkit report --profile quick --update-from results/quick

lock:
	requirements/update-lock.sh
