"""The configs of the training stages: finetune and distill (see llmzip/config/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmzip.config.choices import LayerSelection, TaskKind, Vocabulary, as_enum
from llmzip.config.data import DataConfig, _check
from llmzip.config.flags import option

# --help sections
TRAINING, STUDENT, SHRINK, LOSSES = "Training", "Student", "Shrink", "Losses"


@dataclass
class TrainConfig:
    """What every training stage shares; Trainer does the loop, these are its knobs."""

    data: DataConfig = field(default_factory=DataConfig)
    epochs: float = option(3.0, help="Training epochs.", panel=TRAINING)
    max_steps: int | None = option(None, help="Stop after N optimizer steps (overrides epochs).", panel=TRAINING)
    batch_size: int = option(32, help="Batch size.", panel=TRAINING)
    learning_rate: float = option(
        5e-5, flag="--lr", help="Peak learning rate (linear warm-up and decay).", panel=TRAINING
    )
    weight_decay: float = option(0.01, help="AdamW weight decay.", panel=TRAINING)
    warmup_ratio: float = option(0.06, help="Share of the steps spent warming the learning rate up.", panel=TRAINING)
    eval_batch_size: int = option(64, help="Batch size of the evaluations.", panel=TRAINING)
    gradient_accumulation_steps: int = option(
        1, flag="--grad-accum", help="Gradient accumulation steps.", panel=TRAINING
    )
    # mixed precision (Trainer/accelerate); bf16 needs AVX512-BF16/AMX on CPU or Ampere+ GPUs
    bf16: bool = option(False, flag="--bf16", help="bf16 mixed precision.", panel=TRAINING)
    fp16: bool = option(False, flag="--fp16", help="fp16 mixed precision (GPU).", panel=TRAINING)
    save_steps: int | None = option(
        None, help="Evaluate + checkpoint (for --resume) every N steps (default once per epoch).", panel=TRAINING
    )
    seed: int = option(0, help="Random seed.")

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
    task: TaskKind | None = option(
        None,
        help="The task head to train (default: the model's own architecture; a bare encoder becomes a sequence "
        "classifier). token-classification reads word lists and one tag per word (--text-column tokens "
        "--label-column ner_tags for conll2003).",
    )

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

    num_layers: int | None = option(
        None, help="Student depth: teacher layers kept (see --layer-selection).", panel=STUDENT
    )
    layer_selection: LayerSelection = option(
        LayerSelection.EVEN,
        help="Which --num-layers teacher layers: evenly spaced, or the most influential (1 − cos of each layer's "
        "input and output on training data).",
        panel=STUDENT,
    )
    layers: list[int] | None = option(
        None, help="Explicit teacher layers, e.g. 0,2,4 (wins over --num-layers).", panel=STUDENT
    )
    hidden_size: int | None = option(None, help="Narrower student width (default: the teacher's).", panel=STUDENT)
    intermediate_size: int | None = option(None, help="Student FFN size.", panel=STUDENT)
    num_attention_heads: int | None = option(None, help="Student heads.", panel=STUDENT)
    temperature: float = option(2.0, help="Softmax temperature T of the soft targets.", panel=STUDENT)
    alpha: float = option(
        0.5, help="Weight of the soft-target KL term (1 − alpha on the hard-label CE).", panel=STUDENT
    )
    hidden_mse: float = option(0.0, help="Weight of hidden-state MSE.", panel=LOSSES)
    hidden_cos: float = option(0.0, help="Weight of hidden-state cosine loss.", panel=LOSSES)
    attention: float = option(0.0, help="Weight of attention-map MSE.", panel=LOSSES)
    embedding: float = option(0.0, help="Weight of embedding MSE.", panel=LOSSES)
    layer_map: list[int] | None = option(
        None,
        help="Teacher layer (1-based output) per student layer, e.g. 2,4,6 (default: uniform).",
        panel=LOSSES,
    )
    intermediate_epochs: float = option(
        0.0, help="TinyBERT stage 1 (intermediate losses only) before the prediction stage.", panel=LOSSES
    )
    # Structured pruning and embedding compression of the student, before its training (which recovers the
    # accuracy by KD): llmzip/shrink/pruning.py, llmzip/shrink/embeddings.py.
    keep_heads: int | None = option(
        None, help="Prune to this many attention heads per layer (first-order Taylor importance).", panel=SHRINK
    )
    keep_ffn: int | None = option(None, help="Prune to this many FFN neurons per layer (same ranking).", panel=SHRINK)
    prune_batches: int = option(32, help="Training batches the pruning importance is measured on.", panel=SHRINK)
    # Pruning in several steps with KD in between (rather than one shot): round r of R prunes to r/R of the way
    # from the teacher's width to keep_heads/keep_ffn (importance re-measured on the student as it is), then trains
    # max_steps/R steps.
    prune_rounds: int = option(
        1,
        help="Prune to --keep-heads/--keep-ffn in this many rounds, each followed by its share of --max-steps.",
        panel=SHRINK,
    )
    vocabulary: Vocabulary = option(
        Vocabulary.FULL, help="task: keep only the token ids the training data uses.", panel=SHRINK
    )
    embedding_rank: int | None = option(
        None, help="Factorize the word embeddings E ≈ A·B at this rank (ALBERT).", panel=SHRINK
    )
    max_positions: int | None = option(
        None, help="Keep this many position embeddings (the rest is never used).", panel=SHRINK
    )
    # LadaBERT's low-rank Linear layers: W ≈ up·down from the SVD, then KD (llmzip/shrink/lowrank.py); by default
    # the FFN pair. Saves parameters below rank in·out/(in+out) (307 for MiniLM's FFN); the latency gain is small where
    # int8 GEMMs are cheap (README).
    linear_rank: int | None = option(
        None, help="Factorize the FFN Linear layers at this rank (SVD init, LadaBERT).", panel=SHRINK
    )
    # Teacher-labelled training rows made by joining two random training texts (llmzip/shrink/augment.py): KD needs no
    # gold label, and longer mixed inputs bring phrase-level training data (SST-2) closer to full sentences.
    augment_pairs: int = option(0, help="Add N teacher-labelled rows, each two training texts joined.", panel=LOSSES)
    # TinyBERT's word-replacement augmentation, with the teacher's own embeddings as the neighbour table.
    augment_swaps: int = option(
        0,
        help="Add N teacher-labelled rows: long training texts with words swapped for near neighbours in the "
        "teacher's embedding space.",
        panel=LOSSES,
    )
    linear_rank_pattern: str = option(
        r"\.layer\.\d+\.(intermediate|output)\.dense$",
        help="Regex on module names: the Linear layers --linear-rank factorizes.",
        panel=SHRINK,
    )
    # Classifier teacher logits computed once, cached on disk, reused across epochs and runs; a causal-LM teacher
    # always runs online (full-vocabulary logits per token do not fit on disk: llmzip/tasks/lm_training.py).
    teacher_cache: bool = option(
        True,
        flag="--teacher-cache/--no-teacher-cache",
        help="Cache the teacher's logits (and, for hidden-state losses, the matched layers' states) on disk.",
        panel=LOSSES,
    )
    # Hidden states are [tokens × layers × hidden] fp16: SST-2's 56k rows × 3 layers × 384 ≈ 1.6 GB.
    teacher_cache_max_gb: float = option(
        4.0, help="Bound on the cached hidden states; larger runs the teacher online instead.", panel=LOSSES
    )
    cache_dir: str | None = option(
        None, help="Teacher cache folder (default $LLMZIP_CACHE or ~/.cache/llmzip).", panel=LOSSES
    )
    # Causal LMs: cache the teacher's k largest logits per token once (on disk, keyed like the logit cache) and
    # distill on them instead of running the teacher every step (0: online, full distributions)
    teacher_top_k: int = option(
        0,
        help="Causal LMs: cache the teacher's k largest logits per token once and distill on them (0: online).",
        panel=LOSSES,
    )

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
        _check(self.prune_rounds >= 1, "prune_rounds", f"must be >= 1, got {self.prune_rounds}")
        if self.prune_rounds > 1:
            _check(
                self.keep_heads is not None or self.keep_ffn is not None,
                "prune_rounds",
                "prunes in rounds toward keep_heads/keep_ffn: set one of them",
            )
            _check(self.max_steps is not None, "prune_rounds", "splits max_steps between its rounds: set max_steps")
            _check(self.intermediate_epochs == 0, "prune_rounds", "is one-stage training: drop intermediate_epochs")
        _check(self.augment_pairs >= 0, "augment_pairs", f"must be >= 0, got {self.augment_pairs}")
        _check(self.augment_swaps >= 0, "augment_swaps", f"must be >= 0, got {self.augment_swaps}")
        _check(self.teacher_cache_max_gb >= 0, "teacher_cache_max_gb", f"must be >= 0, got {self.teacher_cache_max_gb}")
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
