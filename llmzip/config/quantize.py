"""The configs of the stages that make an int8/int4 model: calibrate and quantize (see llmzip/config/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from llmzip.config.choices import (
    Activations,
    CalibrationMethod,
    CpuTarget,
    Granularity,
    SaturationFix,
    Target,
    WeightAlgorithm,
    as_enum,
)
from llmzip.config.data import DataConfig, _check
from llmzip.config.flags import option


@dataclass
class CalibrateConfig:
    """Run sampled training examples through the model and record activation ranges."""

    data: DataConfig = field(default_factory=DataConfig)
    num_samples: int = option(256, help="Training examples to sample.")
    batch_size: int = option(32, help="Batch size.")
    bins: int = option(2048, help="Histogram bins per tensor (memory stays O(bins), whatever --num-samples is).")
    seed: int = option(0, help="Random seed (the sampled rows).")
    # Calibration reads the train split only.
    UNUSED_DATA: ClassVar[tuple[str, ...]] = ("eval_split", "max_eval_samples", "max_train_samples")

    def __post_init__(self) -> None:
        _check(self.num_samples > 0, "num_samples", f"must be > 0, got {self.num_samples}")
        _check(self.bins >= 128 and self.bins % 2 == 0, "bins", f"must be even and >= 128, got {self.bins}")
        _check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")


# The task head is a handful of FLOPs and the most accuracy-sensitive layer: keep it in fp32 by default.
DEFAULT_EXCLUDE = [r"(^|\.)(classifier|pooler|score|lm_head)(\.|$)"]


@dataclass
class QuantizeConfig:
    """int8 weights (symmetric or asymmetric, per-channel or per-tensor) and static int8 activations."""

    weight_bits: int = option(
        8, help="8 (int8 weights and activations) or 4 (int4 weight-only, onnxruntime's MatMulNBits)."
    )
    # int8 weights with float activations (MatMulNBits bits=8); implied by 4 bits and by causal LMs, whose
    # activation outliers make static int8 activations a poor trade (LLM.int8, SmoothQuant).
    weight_only: bool = option(
        False,
        flag="--weight-only",
        help="int8 weights, float activations (MatMulNBits); implied by 4 bits and causal LMs.",
    )
    weight_block_size: int = option(32, help="Weight-only: input features per weight scale (power of 2 >= 16).")
    # gptq: Frantar et al. 2023; source keeps a GGUF file's own blocks exactly (llmzip/sources/gguf_blocks.py)
    algorithm: WeightAlgorithm | None = option(
        None,
        help="Weight-only codes: rtn (nearest), gptq (Hessian error feedback on the calibration), awq "
        "(activation-aware scales), source (a GGUF file's own blocks, exactly). Default: source for a model "
        "imported from GGUF, else rtn.",
    )
    gptq_damp: float = option(0.01, help="GPTQ: damping, share of mean(diag H) added to its diagonal.")
    head_bits: int | None = option(
        None, help="Weight-only: 4 or 8 bits for the output head (lm_head); default as the weights."
    )
    weight_granularity: Granularity = option(
        Granularity.PER_CHANNEL, help="One weight scale per output channel, or per tensor."
    )
    weight_symmetric: bool = option(
        True,
        flag="--weight-symmetric/--weight-asymmetric",
        help="Weight zero point fixed at 0, or fitted to [min, max].",
    )
    # u8 activations x s8 weights is the integer path onnxruntime accelerates (VNNI/AMX), so asymmetric uint8.
    activation_symmetric: bool = option(
        False,
        flag="--activation-symmetric/--activation-asymmetric",
        help="int8 activations around 0, or uint8 fitted to [min, max] (the fast U8S8 path).",
    )
    activations: Activations = option(
        Activations.STATIC, help="static: scales from calibration; dynamic: per call (DynamicQuantizeMatMul)."
    )
    attention: bool = option(
        False, flag="--attention", help="Also quantize the attention matmuls Q·Kᵀ and P·V (static uint8 × int8)."
    )
    embeddings: bool = option(
        True,
        flag="--embeddings/--fp32-embeddings",
        help="Store the word-embedding table as int8 with per-row scales (most of a small model's bytes), or "
        "keep it fp32.",
    )
    target: Target = option(
        Target.ONNXRUNTIME,
        help="Runtime the int8 graph is for: onnxruntime (uint8 activations, its fused CPU kernels) or tensorrt "
        "(explicit quantization: int8 activations with zero point 0, symmetric weights, fp32 embeddings, float "
        "attention; onnxruntime's CPU provider runs the same file).",
    )
    target_cpu: CpuTarget = option(
        CpuTarget.ANY,
        help="CPU class the int8 model must be right on: any (safe on AVX2 without VNNI too), avx2, avx512 "
        "(without VNNI), vnni, amx (full 8 bits everywhere), or native (this machine).",
    )
    saturation_fix: SaturationFix = option(
        SaturationFix.MEASURED,
        help="For a saturating target: 7-bit weights only on the rows that can saturate on the calibration ranges "
        "(measured), or on every row (all, like NNCF's overflow_fix).",
    )
    # bench-quant: 1.5 left a 0.3% logit change on SST-2 dev, 1.0 left 7% (README).
    saturation_margin: float = option(
        1.5, help="measured: protect inputs this many times beyond the calibrated ranges, per channel."
    )
    method: CalibrationMethod = option(
        CalibrationMethod.MINMAX,
        help="Activation range from the calibration histograms (no re-calibration needed).",
    )
    percentile: float = option(99.99, help="For --method percentile: keep this share of values on each side.")
    smoothquant: float | None = option(
        None, help="SmoothQuant migration strength α in [0, 1] (e.g. 0.5); off by default."
    )
    sensitivity: bool = option(
        False,
        flag="--sensitivity",
        help="Report each layer quantized alone (logit SQNR, accuracy drop on --data's eval split).",
    )
    max_accuracy_drop: float | None = option(
        None, help="Keep the most sensitive layers fp32 until the accuracy drop (points) fits; needs --data."
    )
    max_perplexity_increase: float | None = option(
        None,
        help="Causal LMs: keep the most sensitive decoder layers fp32 until the perplexity increase (%) on "
        "--data's eval windows fits.",
    )
    # a broken model, not rounding: int4 costs percents; the error names the first layer whose output SQNR collapses
    max_perplexity_ratio: float = option(
        2.0,
        help="Causal LMs: fail when perplexity on the held-back calibration windows exceeds this × fp32's.",
    )
    fallback_latency: bool = option(
        True,
        flag="--fallback-latency/--no-fallback-latency",
        help="Export and time every fallback configuration (onnxruntime, 1 thread) for the Pareto list.",
    )
    qat_steps: int = option(
        0, help="Quantization-aware training steps after calibration (0 = off; STE), on --data's train split."
    )
    qat_learning_rate: float = option(2e-5, help="QAT learning rate.")
    qat_batch_size: int = option(32, help="QAT batch size.")
    qat_alpha: float = option(0.5, help="QAT: KD weight from the fp32 model as teacher (0 = labels only).")
    data: DataConfig = field(default_factory=DataConfig)  # eval split for sensitivity / fallback, train for QAT
    # None = the task's default: a classifier keeps its head fp32 (DEFAULT_EXCLUDE); a causal LM quantizes
    # everything, lm_head included (it is the largest matrix of a small LM; `--exclude lm_head` keeps it fp32).
    exclude: list[str] | None = option(
        None,
        repeat=True,
        help="Keep in fp32: a regex on module names, or type:Class on the module's or its parent's class "
        "(e.g. type:BertOutput); repeatable; replaces the task's default (a classifier's head).",
    )
    seed: int = option(0, help="Random seed (QAT, sampled rows).")

    def __post_init__(self) -> None:
        # Accept plain strings from Python callers too (the YAML/CLI path already converts).
        self.method = as_enum(CalibrationMethod, self.method, "method")
        if self.algorithm is not None:
            self.algorithm = as_enum(WeightAlgorithm, self.algorithm, "algorithm")
        _check(self.head_bits in (None, 4, 8), "head_bits", f"must be 4 or 8, got {self.head_bits}")
        _check(0 < self.gptq_damp < 1, "gptq_damp", f"must be in (0, 1), got {self.gptq_damp}")
        if self.weight_bits == 4:
            self.weight_only = True
        self.weight_granularity = as_enum(Granularity, self.weight_granularity, "weight_granularity")
        self.activations = as_enum(Activations, self.activations, "activations")
        self.target_cpu = as_enum(CpuTarget, self.target_cpu, "target_cpu")
        self.target = as_enum(Target, self.target, "target")
        if self.target is Target.TENSORRT:
            self._for_tensorrt()
        self.saturation_fix = as_enum(SaturationFix, self.saturation_fix, "saturation_fix")
        _check(self.saturation_margin >= 1, "saturation_margin", f"must be >= 1, got {self.saturation_margin}")
        _check(
            not (self.activations is Activations.DYNAMIC and self.activation_symmetric),
            "activation_symmetric",
            "dynamic activations are uint8 asymmetric (ONNX DynamicQuantizeLinear); drop --activation-symmetric",
        )
        _check(
            self.weight_bits in (4, 8), "weight_bits", f"must be 8 (int8) or 4 (weight-only), got {self.weight_bits}"
        )
        bs = self.weight_block_size
        _check(bs >= 16 and bs & (bs - 1) == 0, "weight_block_size", f"must be a power of 2 >= 16, got {bs}")
        if self.weight_bits == 4:
            _check(
                self.smoothquant is None,
                "smoothquant",
                "4-bit weights are weight-only (float activations): SmoothQuant has nothing to smooth; drop it",
            )
            _check(self.qat_steps == 0, "qat_steps", "quantization-aware training is int8-only so far; drop it")
            _check(not self.attention, "attention", "int8 attention needs int8 activations; drop it with 4-bit weights")
        _check(
            not (self.attention and self.activations is Activations.DYNAMIC),
            "attention",
            "int8 attention matmuls use static calibrated scales; drop --attention or use --activations static",
        )
        _check(50 < self.percentile < 100, "percentile", f"must be in (50, 100), got {self.percentile}")
        _check(
            self.smoothquant is None or 0 <= self.smoothquant <= 1,
            "smoothquant",
            f"the migration strength α must be in [0, 1], got {self.smoothquant}",
        )
        _check(
            self.max_accuracy_drop is None or self.max_accuracy_drop >= 0,
            "max_accuracy_drop",
            f"must be >= 0 (points), got {self.max_accuracy_drop}",
        )
        _check(self.max_perplexity_ratio > 1, "max_perplexity_ratio", f"must be > 1, got {self.max_perplexity_ratio}")
        _check(
            self.max_perplexity_increase is None or self.max_perplexity_increase >= 0,
            "max_perplexity_increase",
            f"must be >= 0 (percent), got {self.max_perplexity_increase}",
        )

    def _for_tensorrt(self) -> None:
        """TensorRT's explicit quantization reads signed int8 with zero point 0 only, through Q/DQ pairs (an int8
        embedding table read by Gather is not Q/DQ), and a quantized Softmax output costs it accuracy: refuse what
        it cannot run, set what it needs."""
        why = "TensorRT's explicit quantization"
        _check(not self.weight_only, "target", f"tensorrt: {why} is int8 weights and activations; drop --weight-only")
        _check(
            self.activations is Activations.STATIC,
            "activations",
            f"tensorrt: {why} has no DynamicQuantizeLinear; use --activations static",
        )
        _check(
            self.weight_symmetric, "weight_symmetric", f"tensorrt: {why} needs zero point 0; drop --weight-asymmetric"
        )
        _check(not self.attention, "attention", "tensorrt: the attention matmuls stay float there; drop --attention")
        _check(
            self.smoothquant is None, "smoothquant", "tensorrt: SmoothQuant's Mul is not exported for it yet; drop it"
        )
        self.activation_symmetric = True
        self.embeddings = False
