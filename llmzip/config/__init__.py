"""Typed, validated configuration for every stage, and the YAML recipe that maps onto them.

Pure Python on purpose: the CLI imports this module, and `llmzip --help` must not pay for torch.
Defaults live here and nowhere else; the CLI only overrides fields that the user set.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from llmzip.config.choices import Activations as Activations
from llmzip.config.choices import CalibrationMethod as CalibrationMethod
from llmzip.config.choices import CpuTarget as CpuTarget
from llmzip.config.choices import EpPrecision as EpPrecision
from llmzip.config.choices import Granularity as Granularity
from llmzip.config.choices import LayerSelection as LayerSelection
from llmzip.config.choices import LmGraph as LmGraph
from llmzip.config.choices import Provider as Provider
from llmzip.config.choices import SaturationFix as SaturationFix
from llmzip.config.choices import TaskKind as TaskKind
from llmzip.config.choices import TorchDtype as TorchDtype
from llmzip.config.choices import Vocabulary as Vocabulary
from llmzip.config.choices import WeightAlgorithm as WeightAlgorithm
from llmzip.config.choices import as_enum as as_enum
from llmzip.config.data import DataConfig as DataConfig
from llmzip.config.data import _check
from llmzip.config.outputs import BENCH_BASELINES as BENCH_BASELINES
from llmzip.config.outputs import BenchConfig as BenchConfig
from llmzip.config.outputs import ExportConfig as ExportConfig


@dataclass
class TrainConfig:
    """What every training stage shares; Trainer does the loop, these are its knobs."""

    data: DataConfig = field(default_factory=DataConfig)
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    bf16: bool = False  # mixed precision (Trainer/accelerate); bf16 needs AVX512-BF16/AMX on CPU or Ampere+ GPUs
    fp16: bool = False
    save_steps: int | None = None  # evaluate + checkpoint (for --resume) every N steps (default: once per epoch)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        _check(
            self.gradient_accumulation_steps > 0,
            "gradient_accumulation_steps",
            f"must be > 0, got {self.gradient_accumulation_steps}",
        )
        _check(not (self.bf16 and self.fp16), "bf16", "bf16 and fp16 are exclusive; pick one")
        _check(self.save_steps is None or self.save_steps > 0, "save_steps", f"must be > 0, got {self.save_steps}")
        _check(self.max_steps is None or self.max_steps > 0, "max_steps", f"must be > 0, got {self.max_steps}")
        _check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.eval_batch_size > 0, "eval_batch_size", f"must be > 0, got {self.eval_batch_size}")
        _check(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tune a pretrained model for its task: an encoder into a sequence classifier (cross-entropy on labels) or a
    token classifier (one label per word, e.g. NER), or a causal LM on raw text in data.max_length-token windows
    (next-token cross-entropy; max_train_samples = windows)."""

    # None: the model's own architecture says (a *ForTokenClassification model is one; a bare encoder becomes a
    # sequence classifier). Set it to give a pretrained encoder another task's head.
    task: TaskKind | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task is not None:
            self.task = as_enum(TaskKind, self.task, "task")


@dataclass
class DistillConfig(TrainConfig):
    """Teacher → student (a subset of the teacher's layers, optionally narrower), trained with KD losses.

    Prediction layer: alpha·T²·KL(softmax(z_T/T) ‖ softmax(z_S/T)) + (1 − alpha)·CE(z_S, y).
    Intermediate layers (weights, 0 = off): hidden-state MSE and cosine, attention-map MSE, embedding MSE, on the
    student↔teacher `layer_map`, through learned projections when the student is narrower.
    `intermediate_epochs > 0` runs TinyBERT's two stages: intermediate losses only, then the prediction layer for
    `epochs`; with 0, all non-zero losses are summed in one stage (DistilBERT's triple loss).
    """

    num_layers: int | None = None  # teacher layers kept, chosen by layer_selection
    layer_selection: LayerSelection = LayerSelection.EVEN
    layers: list[int] | None = None  # explicit teacher layer indices (wins over num_layers)
    hidden_size: int | None = None  # a narrower student (None: the teacher's width)
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft-target KL term; 1 - alpha goes to the hard-label CE
    hidden_mse: float = 0.0
    hidden_cos: float = 0.0
    attention: float = 0.0
    embedding: float = 0.0
    layer_map: list[int] | None = None  # teacher layer (1-based output) for each student layer; default uniform
    intermediate_epochs: float = 0.0
    # Structured pruning and embedding compression of the student, before its training (which recovers the
    # accuracy by KD): llmzip/shrink/pruning.py, llmzip/shrink/embeddings.py.
    keep_heads: int | None = None  # attention heads kept per layer, by first-order Taylor importance
    keep_ffn: int | None = None  # FFN neurons kept per layer, same ranking
    prune_batches: int = 32  # training batches the importance is measured on
    vocabulary: Vocabulary = Vocabulary.FULL  # task: only the token ids the training data uses keep a row
    embedding_rank: int | None = None  # word embeddings factorized E ≈ A·B (ALBERT) at this rank
    max_positions: int | None = None  # keep this many position embeddings (the rest is never used)
    # LadaBERT's low-rank Linear layers: W ≈ up·down from the SVD, then KD (llmzip/shrink/lowrank.py); by default
    # the FFN pair. Saves parameters below rank in·out/(in+out) (307 for MiniLM's FFN); the latency gain is small where
    # int8 GEMMs are cheap (README).
    linear_rank: int | None = None
    # Teacher-labelled training rows made by joining two random training texts (llmzip/shrink/augment.py): KD needs no
    # gold label, and longer mixed inputs bring phrase-level training data (SST-2) closer to full sentences.
    augment_pairs: int = 0
    linear_rank_pattern: str = r"\.layer\.\d+\.(intermediate|output)\.dense$"
    # Classifier teacher logits computed once, cached on disk, reused across epochs and runs; a causal-LM teacher
    # always runs online (full-vocabulary logits per token do not fit on disk: llmzip/tasks/lm_training.py).
    teacher_cache: bool = True
    cache_dir: str | None = None  # default: $LLMZIP_CACHE or ~/.cache/llmzip
    # Causal LMs: cache the teacher's k largest logits per token once (on disk, keyed like the logit cache) and
    # distill on them instead of running the teacher every step (0: online, full distributions)
    teacher_top_k: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check(0 <= self.alpha <= 1, "alpha", f"must be in [0, 1], got {self.alpha}")
        for key in ("hidden_mse", "hidden_cos", "attention", "embedding", "intermediate_epochs"):
            _check(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        for key in (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "keep_heads",
            "keep_ffn",
            "embedding_rank",
            "max_positions",
            "linear_rank",
        ):
            _check(getattr(self, key) is None or getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        _check(self.prune_batches > 0, "prune_batches", f"must be > 0, got {self.prune_batches}")
        _check(self.augment_pairs >= 0, "augment_pairs", f"must be >= 0, got {self.augment_pairs}")
        self.vocabulary = as_enum(Vocabulary, self.vocabulary, "vocabulary")
        self.layer_selection = as_enum(LayerSelection, self.layer_selection, "layer_selection")
        _check(self.teacher_top_k >= 0, "teacher_top_k", f"must be >= 0, got {self.teacher_top_k}")
        _check(
            self.layer_selection is LayerSelection.EVEN or self.layers is None,
            "layer_selection",
            "chooses among the teacher's layers for num_layers; drop it with an explicit layers list",
        )
        _check(
            self.keep_heads is None or self.attention == 0,
            "attention",
            "the attention-map loss compares all of the teacher's heads; set attention: 0 with keep_heads",
        )
        _check(
            self.intermediate_epochs == 0 or self.intermediate_weight > 0,
            "intermediate_epochs",
            "a two-stage schedule needs an intermediate loss (hidden_mse, hidden_cos, attention or embedding > 0)",
        )
        _check(self.num_layers is None or self.num_layers > 0, "num_layers", f"must be > 0, got {self.num_layers}")
        if self.layers is not None:
            _check(len(self.layers) > 0, "layers", "must name at least one teacher layer")
            _check(len(set(self.layers)) == len(self.layers), "layers", f"has duplicates: {self.layers}")
            _check(all(i >= 0 for i in self.layers), "layers", f"must be >= 0, got {self.layers}")

    @property
    def intermediate_weight(self) -> float:
        return self.hidden_mse + self.hidden_cos + self.attention + self.embedding

    def losses(self, *, stage: str) -> dict[str, float]:
        """The non-zero loss weights of one training stage ("intermediate" or "prediction")."""
        intermediate = {
            "hidden_mse": self.hidden_mse,
            "hidden_cos": self.hidden_cos,
            "attention": self.attention,
            "embedding": self.embedding,
        }
        prediction = {"kd": self.alpha, "ce": 1.0 - self.alpha}
        if stage == "intermediate":
            chosen = intermediate
        elif self.intermediate_epochs > 0:
            chosen = prediction
        else:
            chosen = {**prediction, **intermediate}
        return {k: v for k, v in chosen.items() if v > 0}


@dataclass
class CalibrateConfig:
    """Run sampled training examples through the model and record activation ranges."""

    data: DataConfig = field(default_factory=DataConfig)
    num_samples: int = 256
    batch_size: int = 32
    bins: int = 2048  # histogram bins per tensor: memory is O(bins), whatever num_samples is
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.num_samples > 0, "num_samples", f"must be > 0, got {self.num_samples}")
        _check(self.bins >= 128 and self.bins % 2 == 0, "bins", f"must be even and >= 128, got {self.bins}")
        _check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")


# The task head is a handful of FLOPs and the most accuracy-sensitive layer: keep it in fp32 by default.
DEFAULT_EXCLUDE = [r"(^|\.)(classifier|pooler|score|lm_head)(\.|$)"]


@dataclass
class QuantizeConfig:
    """int8 weights (symmetric or asymmetric, per-channel or per-tensor) and static int8 activations."""

    weight_bits: int = 8  # 4 = weight-only int4 (float activations), exported as onnxruntime's MatMulNBits
    # int8 weights with float activations (MatMulNBits bits=8); implied by 4 bits and by causal LMs, whose
    # activation outliers make static int8 activations a poor trade (LLM.int8, SmoothQuant).
    weight_only: bool = False
    weight_block_size: int = 32  # weight-only: one scale per this many input features (power of 2, >= 16)
    # weight-only codes: rtn rounds each weight to its nearest code; gptq feeds each column's rounding error
    # forward through the inverse Hessian of the layer's calibration inputs (Frantar et al. 2023); source keeps a
    # GGUF file's own blocks exactly. None: source for a model imported from GGUF (at the default layout), else rtn
    algorithm: WeightAlgorithm | None = None
    gptq_damp: float = 0.01  # fraction of mean(diag H) added to H's diagonal before inverting
    head_bits: int | None = None  # weight-only: bits of the output head (lm_head) when quantized; None = weight_bits
    weight_granularity: Granularity = Granularity.PER_CHANNEL
    weight_symmetric: bool = True
    # u8 activations x s8 weights is the integer path onnxruntime accelerates (VNNI/AMX), so asymmetric uint8.
    activation_symmetric: bool = False
    activations: Activations = Activations.STATIC
    attention: bool = False  # also the attention matmuls Q·Kᵀ and P·V (static uint8 × int8)
    embeddings: bool = True  # int8 word-embedding table, one scale per row (most of a small model's bytes)
    # The CPU class the int8 model must be right on; "any" is safe on AVX2 machines without VNNI as well.
    target_cpu: CpuTarget = CpuTarget.ANY
    saturation_fix: SaturationFix = SaturationFix.MEASURED
    # measured: protect inputs up to this many times further from 0 than any calibration sample reached, per
    # channel (bench-quant: 1.5 left a 0.3% logit change on SST-2 dev, 1.0 left 7%; README).
    saturation_margin: float = 1.5
    method: CalibrationMethod = CalibrationMethod.MINMAX  # activation range from the calibration histograms
    percentile: float = 99.99  # for method=percentile: keep this share of values on each side
    smoothquant: float | None = None  # SmoothQuant migration strength α (e.g. 0.5); None = off
    sensitivity: bool = False  # quantize each layer alone: logit SQNR and accuracy drop on data's eval split
    max_accuracy_drop: float | None = None  # points; keep the most sensitive layers fp32 until the drop fits
    # causal LMs: percent; keep the most sensitive decoder layers fp32 until the perplexity increase fits
    max_perplexity_increase: float | None = None
    # causal LMs: fail when perplexity on the held-back calibration windows exceeds this × fp32's (a broken model,
    # not rounding: int4 costs percents); the error names the first layer whose output SQNR collapses
    max_perplexity_ratio: float = 2.0
    fallback_latency: bool = True  # export and time every fallback configuration (onnxruntime, 1 thread)
    qat_steps: int = 0  # > 0: quantization-aware training after calibration (STE), on data's train split
    qat_learning_rate: float = 2e-5
    qat_batch_size: int = 32
    qat_alpha: float = 0.5  # KD weight from the fp32 model as teacher (0 = labels only)
    data: DataConfig = field(default_factory=DataConfig)  # eval split for sensitivity / fallback, train for QAT
    # None = the task's default: a classifier keeps its head fp32 (DEFAULT_EXCLUDE); a causal LM quantizes
    # everything, lm_head included (it is the largest matrix of a small LM; `--exclude lm_head` keeps it fp32).
    exclude: list[str] | None = None
    seed: int = 0

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


STAGE_CONFIGS: dict[str, type] = {
    "finetune": FinetuneConfig,
    "distill": DistillConfig,
    "calibrate": CalibrateConfig,
    "quantize": QuantizeConfig,
    "export": ExportConfig,
    "bench": BenchConfig,
}


def to_dict(config: Any) -> dict[str, Any]:
    """The fully resolved config as plain JSON-able data (enums as their values)."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))
