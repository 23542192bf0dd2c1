"""The configs of the stages that write and measure deployable models: export and bench (see llmzip/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmzip.config.choices import EpPrecision, LmGraph, Provider, TorchDtype, as_enum
from llmzip.config.data import DataConfig, _check


@dataclass
class ExportConfig:
    """Write model.onnx and check it against PyTorch."""

    opset: int = 17
    parity_samples: int = 32
    # Tolerances on max |logit difference|: fp32 only differs by float reassociation; int8 also by rounding
    # ties and integer accumulation inside onnxruntime's kernels.
    fp32_tolerance: float = 1e-3  # absolute
    # Relative to the largest |logit|: a rounding tie decided differently after a float reassociation moves one
    # activation by a whole quantization step, and in a deep model that can reach a few % of the logit range.
    int8_tolerance: float = 0.05
    # int8 Linear bias folded into onnxruntime's MatMulIntegerToFloat (com.microsoft, CPU). False keeps a plain
    # QDQ graph, the portable form other runtimes (TensorRT, OpenVINO) read.
    fold_bias: bool = True
    # Task accuracy of the ONNX model and of the PyTorch model on data's eval split, both in the manifest.
    eval_accuracy: bool = False
    # MatMulNBits' accuracy_level for weight-only layers: 4 = int8 activations inside the kernel (onnxruntime's
    # fast CPU path, onnxruntime-genai's default; SmolLM2 int8 decodes at 54 tokens/s with it, 2.4 without), 0 =
    # float. Parity is always checked at 0 and 4's effect recorded. None = 4.
    accuracy_level: int | None = None
    lm_graph: LmGraph = LmGraph.AUTO  # causal LMs: fused onnxruntime decoder ops or the traced graph
    # GGUF blocks with a minimum (Q4_1, Q4_K ...): exported as MatMulNBits + a small correction product (False,
    # fast) or folded into float zero points (True: also exact, but onnxruntime's CPU kernel dequantizes per call)
    float_zero_points: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.opset >= 17, "opset", f"must be >= 17, got {self.opset}")
        _check(self.parity_samples > 0, "parity_samples", f"must be > 0, got {self.parity_samples}")
        _check(self.accuracy_level in (None, 0, 1, 2, 3, 4), "accuracy_level", "must be 0-4")
        self.lm_graph = as_enum(LmGraph, self.lm_graph, "lm_graph")


BENCH_BASELINES = ("torch-bf16", "ort-dynamic-int8", "genai-int4", "genai-fp32")


@dataclass
class BenchConfig:
    """Latency, throughput, size and accuracy of one or more model directories, measured side by side.

    The gates compare the last model directory (the candidate) with the first (the baseline).
    """

    data: DataConfig = field(default_factory=DataConfig)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    seq_len: int = 128
    threads: int = 1
    provider: Provider = Provider.CPU
    # --provider openvino: the precision OpenVINO runs fp32 graphs at (bf16 is its fast path on AMX machines).
    ep_precision: EpPrecision = EpPrecision.F32
    warmup: int = 5
    iterations: int = 30
    # bf16 is fast only with AVX512-BF16/AMX on CPU (or a GPU); elsewhere PyTorch emulates it, slower than fp32.
    torch_dtype: TorchDtype = TorchDtype.FP32
    # Built-in baselines added beside the given directories: "torch-bf16" (a bf16 twin of every fp32 PyTorch
    # directory) and "ort-dynamic-int8" (onnxruntime quantize_dynamic, per-channel, of every fp32 ONNX export).
    baselines: list[str] = field(default_factory=list)
    # Causal LMs: perplexity on the eval split's first data.max_eval_samples windows (default 20) of
    # data.max_length tokens; prefill latency at these prompt lengths; decode tokens/s for new_tokens greedy
    # tokens after a prompt_tokens prompt; medians of lm_repeats runs.
    prefill_lengths: list[int] = field(default_factory=lambda: [128, 512])
    # Causal LMs: more text files (or hub ids) whose first windows every variant's perplexity is also measured on
    # (same window length and count): no perplexity should be tuned to one text
    also_score: list[str] = field(default_factory=list)
    prompt_tokens: int = 128
    new_tokens: int = 64
    lm_repeats: int = 5
    min_speedup: float | None = None  # gate: candidate p50 speedup over the baseline, at every batch size
    max_accuracy_drop: float | None = None  # gate: in points (0.5 = half a percentage point)
    seed: int = 0  # the bootstrap resampling of the speedup intervals

    def __post_init__(self) -> None:
        self.provider = as_enum(Provider, self.provider, "provider")
        self.ep_precision = as_enum(EpPrecision, self.ep_precision, "ep_precision")
        self.torch_dtype = as_enum(TorchDtype, self.torch_dtype, "torch_dtype")
        unknown = [b for b in self.baselines if b not in BENCH_BASELINES]
        _check(not unknown, "baselines", f"unknown {unknown}; choose from {', '.join(BENCH_BASELINES)}")
        _check(
            self.min_speedup is None or self.min_speedup > 0,
            "min_speedup",
            f"must be > 0, got {self.min_speedup}",
        )
        _check(
            self.max_accuracy_drop is None or self.max_accuracy_drop >= 0,
            "max_accuracy_drop",
            f"must be >= 0 (points), got {self.max_accuracy_drop}",
        )
        _check(
            len(self.batch_sizes) > 0 and all(b > 0 for b in self.batch_sizes),
            "batch_sizes",
            f"must be positive integers, got {self.batch_sizes}",
        )
        _check(8 <= self.seq_len <= 8192, "seq_len", f"must be in [8, 8192], got {self.seq_len}")
        _check(self.threads > 0, "threads", f"must be > 0, got {self.threads}")
        _check(self.new_tokens >= 2, "new_tokens", f"must be >= 2, got {self.new_tokens}")
        _check(self.lm_repeats >= 1, "lm_repeats", f"must be >= 1, got {self.lm_repeats}")
        _check(all(n >= 1 for n in self.prefill_lengths), "prefill_lengths", "must be positive")
        _check(self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}")
        _check(self.iterations >= 3, "iterations", f"must be >= 3, got {self.iterations}")
