"""The configs of the stages that write and measure deployable models: export and bench (see config/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from llmzip.config.choices import EpPrecision, LmGraph, Provider, Target, TorchDtype, as_enum
from llmzip.config.data import DataConfig, _check
from llmzip.config.flags import option


@dataclass
class ExportConfig:
    """Write model.onnx and check it against PyTorch."""

    opset: int = option(17, help="ONNX opset (>= 17).")
    parity_samples: int = option(32, help="Rows the ONNX model is checked against PyTorch on.")
    # Tolerances on max |logit difference|: fp32 only differs by float reassociation; int8 also by rounding
    # ties and integer accumulation inside onnxruntime's kernels.
    fp32_tolerance: float = option(1e-3, help="Parity: largest |logit difference| of an fp32 export (absolute).")
    # Relative to the largest |logit|: a rounding tie decided differently after a float reassociation moves one
    # activation by a whole quantization step, and in a deep model that can reach a few % of the logit range.
    # tensorrt: signed activations with zero point 0 spend half their codes on one-sided tensors (GELU outputs), so
    # a tie flip is a coarser step and grows further by the last layer: measured 0.213 on a logit range of 3.2 for
    # the reference teacher with percentile ranges (0.064 with min/max), the same predictions on 99.9% of SST-2 dev.
    int8_tolerance: float | None = option(
        None,
        help="Parity: largest |logit difference| of an int8 export, × max |logit|.",
        default_text="0.05; 0.10 for --target tensorrt",
    )
    # The portable QDQ form is the one other runtimes (TensorRT, OpenVINO) read.
    fold_bias: bool = option(
        True,
        flag="--fold-bias/--plain-qdq",
        help="int8: fold each Linear's bias into onnxruntime's MatMulIntegerToFloat, or keep portable QDQ.",
    )
    # None: what the model was quantized for (its manifest), onnxruntime for a float model.
    target: Target | None = option(
        None,
        help="Runtime the graph is for: onnxruntime, or tensorrt (portable QDQ, checked against TensorRT's "
        "explicit-quantization rules; the model must be quantized with --target tensorrt).",
        default_text="as quantized",
    )
    fp16: bool = option(
        False, flag="--fp16", help="Float models: write float16 weights and math (inputs/outputs unchanged), for GPUs."
    )
    # float16 rounds every activation to 11 significant bits: relative, like int8's.
    fp16_tolerance: float = option(0.02, help="Parity: largest |logit difference| of an fp16 export, × max |logit|.")
    # Task accuracy of the ONNX model and of the PyTorch model on data's eval split, both in the manifest.
    eval_accuracy: bool = option(
        False,
        flag="--eval-accuracy/--no-eval-accuracy",
        help="Record ONNX and PyTorch task accuracy on --data's eval split.",
        default_text="on when --data is given",
    )
    # 4 is onnxruntime's fast CPU path and onnxruntime-genai's default (SmolLM2 int8 decodes at 54 tokens/s with
    # it, 2.4 without). Parity is always checked at 0 and 4's effect recorded.
    accuracy_level: int | None = option(
        None,
        help="Weight-only: MatMulNBits accuracy_level (4 = int8 activations in the kernel; 0 = float).",
        default_text="4",
    )
    lm_graph: LmGraph = option(
        LmGraph.AUTO,
        help="Causal LMs: onnxruntime's fused decoder ops where the architecture allows (auto), fused, or the "
        "traced graph (any ONNX runtime).",
    )
    float_zero_points: bool = option(
        False,
        flag="--float-zero-points",
        help="GGUF blocks with minimums (Q4_1, Q4_K): float zero points (exact, slow CPU kernel) instead of the "
        "default correction product (exact, fast).",
    )
    # The int8-kernel checks (fusions, the saturation rule) stay on the CPU provider: they are about its kernels.
    provider: Provider = option(Provider.CPU, help="Execution provider the parity check and --data's accuracy run on.")
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = option(0, help="Random seed (the parity rows).")
    UNUSED_DATA: ClassVar[tuple[str, ...]] = ("train_split", "max_train_samples", "skip_tokens")

    def __post_init__(self) -> None:
        _check(self.opset >= 17, "opset", f"must be >= 17, got {self.opset}")
        _check(self.parity_samples > 0, "parity_samples", f"must be > 0, got {self.parity_samples}")
        _check(self.accuracy_level in (None, 0, 1, 2, 3, 4), "accuracy_level", "must be 0-4")
        self.lm_graph = as_enum(LmGraph, self.lm_graph, "lm_graph")
        self.provider = as_enum(Provider, self.provider, "provider")
        if self.target is not None:
            self.target = as_enum(Target, self.target, "target")
        _check(
            not (self.fp16 and self.target is Target.TENSORRT),
            "fp16",
            "a tensorrt int8 export keeps float32 (TensorRT picks fp16 for the float layers itself); drop --fp16",
        )


BENCH_BASELINES = ("torch-bf16", "ort-dynamic-int8", "genai-int4", "genai-fp32")


@dataclass
class BenchConfig:
    """Latency, throughput, size and accuracy of one or more model directories, measured side by side.

    The gates compare the last model directory (the candidate) with the first (the baseline).
    """

    data: DataConfig = field(default_factory=DataConfig)
    batch_sizes: list[int] = option(factory=lambda: [1, 8], help="Comma-separated batch sizes, e.g. 1,8.")
    seq_len: int = option(128, help="Sequence length every input is padded/truncated to.")
    threads: int = option(1, help="Intra-op threads (onnxruntime and torch).")
    provider: Provider = option(Provider.CPU, help="Execution provider.")
    engine_cache: str | None = option(
        None,
        help="--provider tensorrt: folder TensorRT's engines are cached in (builds take minutes).",
        default_text="~/.cache/llmzip/tensorrt",
    )
    ep_precision: EpPrecision = option(
        EpPrecision.F32,
        help="--provider openvino: the precision it runs fp32 graphs at (bf16: its fast path on AMX).",
    )
    warmup: int = option(5, help="Untimed runs per variant and batch size.")
    iterations: int = option(30, help="Timed runs per variant and batch size (round-robin).")
    # elsewhere PyTorch emulates bf16, slower than fp32
    torch_dtype: TorchDtype = option(
        TorchDtype.FP32,
        help="dtype of PyTorch variants (bf16 is fast only with AVX512-BF16/AMX or on a GPU; fp16 on a CUDA "
        "device only).",
    )
    baselines: list[str] = option(
        factory=list,
        flag="--baseline",
        repeat=True,
        help="Add a built-in baseline (repeatable): torch-bf16 (bf16 twin of each fp32 PyTorch dir), "
        "ort-dynamic-int8 (onnxruntime quantize_dynamic, per-channel, of each fp32 ONNX export); causal LMs: "
        "genai-int4, genai-fp32 (onnxruntime-genai's model builder on the first fp32 PyTorch dir, own venv).",
    )
    # Causal LMs: perplexity on the eval split's first data.max_eval_samples windows (default 20) of
    # data.max_length tokens; prefill latency at these prompt lengths; decode tokens/s for new_tokens greedy
    # tokens after a prompt_tokens prompt; medians of lm_repeats runs.
    prefill_lengths: list[int] = option(
        factory=lambda: [128, 512], help="Causal LMs: prompt lengths whose prefill is timed, e.g. 128,512."
    )
    # no perplexity should be tuned to one text
    also_score: list[str] = option(
        factory=list,
        repeat=True,
        help="Causal LMs: another text file or hub id (repeatable) whose first windows each variant's perplexity "
        "is also measured on.",
    )
    prompt_tokens: int = option(128, help="Causal LMs: prompt length before decoding.")
    new_tokens: int = option(64, help="Causal LMs: greedy tokens decoded and timed.")
    lm_repeats: int = option(5, help="Causal LMs: timed runs (median, min, max).")
    min_speedup: float | None = option(
        None,
        help="Gate: fail (exit 8) unless the last model's p50 speedup over the first is at least this, at every "
        "batch size.",
        panel="Gates",
    )
    max_accuracy_drop: float | None = option(
        None,
        help="Gate: fail (exit 8) if the last model's accuracy is more than this many points (0.5 = half a "
        "percentage point) below the first's.",
        panel="Gates",
    )
    # onnxruntime's softmax makes the masked (padding) positions of a padded batch denormal (llmzip/runtime/hardware.py)
    flush_denormals: bool = option(
        True,
        flag="--flush-denormals/--keep-denormals",
        help="Run every variant with denormal floats flushed to zero (FTZ/DAZ, as TensorRT and oneDNN do), or not.",
    )
    seed: int = option(0, help="Random seed (the bootstrap resampling of the speedup intervals).")
    UNUSED_DATA: ClassVar[tuple[str, ...]] = ("train_split", "max_train_samples")

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
