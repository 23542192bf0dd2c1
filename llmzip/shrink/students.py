"""Building a student from a teacher: a subset of its layers, optionally narrower, initialised from it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llmzip.config import DistillConfig, Vocabulary
from llmzip.errors import ConfigError, ModelError
from llmzip.modeling import evenly_spaced, layer_stack, select_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class StudentPlan:
    layers: list[int]  # teacher layers the student is cut from
    layer_map: list[int]  # teacher hidden-state index (1-based layer output) each student layer imitates
    hidden_size: int
    narrower: bool
    basis: torch.Tensor | None = None  # teacher→student embedding projection, when narrower (set by build)


def block_influence(teacher: PreTrainedModel, train: Any, collator: Any, *, batches: int) -> list[float]:
    """Per teacher layer, 1 − the mean cosine similarity of its input and output hidden states over the real
    tokens of the first `batches` training batches (block influence, Men et al. 2024): how much the layer turns
    the residual stream. A layer with little influence is the cheapest to drop."""
    _, stack = layer_stack(teacher)
    sums = [0.0] * len(stack)
    count = 0
    inputs: dict[int, torch.Tensor] = {}
    mask_holder: dict[str, torch.Tensor] = {}

    def before(i: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            inputs[i] = args[0].detach()

        return hook

    def after(i: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            hidden = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(inputs.pop(i).float(), hidden.detach().float(), dim=-1)
            sums[i] += float(cos[mask_holder["m"]].sum())

        return hook

    handles = [layer.register_forward_pre_hook(before(i)) for i, layer in enumerate(stack)]
    handles += [layer.register_forward_hook(after(i)) for i, layer in enumerate(stack)]
    rows = [{k: train[i][k] for k in ("input_ids", "attention_mask")} for i in range(min(len(train), 8 * batches))]
    try:
        with torch.no_grad():
            for start in range(0, len(rows), 8):
                batch = collator(rows[start : start + 8])
                mask_holder["m"] = batch["attention_mask"].bool()
                teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                count += int(mask_holder["m"].sum())
    finally:
        for handle in handles:
            handle.remove()
    return [1.0 - total / max(1, count) for total in sums]


def plan(config: DistillConfig, teacher: PreTrainedModel, *, influence: list[float] | None = None) -> StudentPlan:
    n = len(layer_stack(teacher)[1])
    if config.layers is not None:
        layers = list(config.layers)
    elif config.num_layers is not None and influence is not None:
        if not 0 < config.num_layers <= n:
            raise ModelError(f"num_layers must be in [1, {n}] for this teacher, got {config.num_layers}")
        layers = sorted(sorted(range(n), key=lambda i: -influence[i])[: config.num_layers])
    elif config.num_layers is not None:
        layers = evenly_spaced(n, config.num_layers)
    else:
        raise ConfigError("distill needs the student's layers: set num_layers (e.g. 3) or layers (e.g. 0,2,4)")
    bad = [i for i in layers if i >= n]
    if bad:
        raise ModelError(f"layers {bad} do not exist: the teacher has layers 0..{n - 1}")
    m = len(layers)
    # TinyBERT's uniform mapping: student layer i (1-based) imitates teacher layer i·N/M, so the last student
    # layer always learns from the last teacher layer.
    layer_map = list(config.layer_map) if config.layer_map is not None else [(i + 1) * n // m for i in range(m)]
    if len(layer_map) != m or not all(1 <= t <= n for t in layer_map):
        raise ConfigError(f"layer_map: needs {m} teacher layers in 1..{n} (one per student layer), got {layer_map}")
    width = config.hidden_size or teacher.config.hidden_size
    return StudentPlan(
        layers=layers, layer_map=layer_map, hidden_size=width, narrower=width != teacher.config.hidden_size
    )


def build(config: DistillConfig, teacher: PreTrainedModel, p: StudentPlan) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The student model and what its initialisation copied from the teacher."""
    same_width = (
        config.hidden_size in (None, teacher.config.hidden_size)
        and config.intermediate_size in (None, teacher.config.intermediate_size)
        and config.num_attention_heads in (None, teacher.config.num_attention_heads)
    )
    if same_width:
        # DistilBERT init: an exact copy of the chosen layers, embeddings and head (a tied LM head stays tied: one
        # deepcopy keeps shared parameters shared).
        student = cut_layers(copy.deepcopy(teacher), p.layers)
        return student, {"init": "teacher layers", "copied_tensors": len(student.state_dict())}
    # A narrower causal-LM student is refused up front (llmzip/scope.py: its embeddings, head and KV heads would
    # need resizing).
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = len(p.layers)
    cfg.hidden_size = p.hidden_size
    cfg.intermediate_size = config.intermediate_size or teacher.config.intermediate_size
    cfg.num_attention_heads = config.num_attention_heads or teacher.config.num_attention_heads
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ConfigError(
            f"hidden_size {cfg.hidden_size} is not divisible by num_attention_heads "
            f"{cfg.num_attention_heads}; pick a head count that divides it"
        )
    student = type(teacher)(cfg)
    # Shapes differ, so only tensors that still match (e.g. unchanged head or FFN sizes) are copied; the rest
    # keeps the standard init and is taught by the intermediate losses through the projections (TinyBERT).
    source = cut_layers(copy.deepcopy(teacher), p.layers).state_dict()
    target = student.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    student.load_state_dict(copied, strict=False)
    info: dict[str, Any] = {"init": "config (narrower); matching tensors copied", "copied_tensors": len(copied)}
    if p.narrower:
        basis = embedding_basis(teacher, p.hidden_size)
        info["projected_embeddings"] = project_embeddings(teacher, student, basis)
        info["init"] += "; embeddings = teacher embeddings projected on their top principal directions"
        p.basis = basis
    return student, info


def cut_layers(model: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """`select_layers`, plus the per-layer config lists that must follow the kept layers (e.g. Qwen's and Gemma's
    `layer_types`: sliding-window or full attention per layer)."""
    cut = select_layers(model, layers)
    for key in ("layer_types",):
        per_layer = getattr(cut.config, key, None)
        if isinstance(per_layer, (list, tuple)) and len(per_layer) > max(layers):
            setattr(cut.config, key, [per_layer[i] for i in layers])
    return cut


def embedding_basis(teacher: PreTrainedModel, width: int) -> torch.Tensor:
    """The top-`width` principal directions [teacher_hidden, width] of the teacher's word embeddings.

    A narrow student that starts from random embeddings must learn a 30k-word vocabulary from the task data
    alone; projecting the teacher's embeddings on their principal subspace keeps most of what they encode.
    """
    embeddings: Any = teacher.get_input_embeddings()
    weight = embeddings.weight.detach().float()
    centered = weight - weight.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)
    return v[:width].t().contiguous()


def project_embeddings(teacher: PreTrainedModel, student: PreTrainedModel, basis: torch.Tensor) -> list[str]:
    """Copy every embedding table whose width shrank (word, position, token type) as table @ basis."""
    done = []
    t_state = teacher.state_dict()
    params: Any = student.named_parameters()
    with torch.no_grad():
        for name, param in params:
            if "embeddings" not in name or not name.endswith("weight") or param.dim() != 2 or name not in t_state:
                continue
            source = t_state[name]
            if source.shape == (param.shape[0], basis.shape[0]) and param.shape[1] == basis.shape[1]:
                param.copy_(source.float() @ basis)
                done.append(name)
    return done


class Projections(nn.Module):
    """Learned linear maps from student width to teacher width for hidden-state/embedding losses.

    They are trained with the student (so they live in the training checkpoint for --resume) and dropped when the
    student is saved: they only exist to make the losses comparable.
    """

    def __init__(self, student_width: int, teacher_width: int, count: int, basis: torch.Tensor | None = None) -> None:
        super().__init__()
        maps = [nn.Linear(student_width, teacher_width) for _ in range(count)]
        if basis is not None:  # start as the inverse of the embedding projection: h_s · basisᵀ ≈ h_t
            with torch.no_grad():
                for m in maps:
                    m.weight.copy_(basis)
                    m.bias.zero_()
        self.maps = nn.ModuleList(maps)

    def forward(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.maps[index](hidden)


def shrink(
    config: DistillConfig,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: Any,
    train: Any,
    collator: Any,
) -> dict[str, Any]:
    """Compress the student before training, as the config asks: task vocabulary → factorized embedding →
    trimmed positions → heads/FFN neurons pruned by Taylor importance (measured with the loss the student is then
    trained on) → low-rank Linear layers. Returns what was done, for the manifest; the model records its new
    shapes in its config.
    """
    from llmzip.data import load_split, texts
    from llmzip.shrink import embeddings

    info: dict[str, Any] = {}
    if config.vocabulary in (Vocabulary.TASK, Vocabulary.TASK_NEAREST):
        # Every training row counts (not only the max_train_samples the student sees): a word the budget
        # skipped is still a word of the task.
        loaded = load_split(config.data, config.data.train_split)
        assert loaded is not None
        first, second = texts(loaded[0], config.data)
        rows = list(zip(first, second)) if second is not None else first
        kept = embeddings.task_vocabulary(tokenizer, rows)
        if tokenizer.unk_token_id is None:
            raise ConfigError("vocabulary: task needs a tokenizer with an unknown token to map dropped ids to")
        info["vocabulary"] = embeddings.prune_vocabulary(
            student, kept, unk_id=int(tokenizer.unk_token_id), nearest=config.vocabulary is Vocabulary.TASK_NEAREST
        )
        eval_loaded = load_split(config.data, config.data.eval_split, optional=True)
        if eval_loaded is not None:
            e_first, e_second = texts(eval_loaded[0], config.data)
            e_rows = list(zip(e_first, e_second)) if e_second is not None else e_first
            info["vocabulary"]["eval_unknown_rate"] = round(embeddings.unknown_rate(tokenizer, e_rows, kept), 5)
    if config.embedding_rank is not None:
        info["embedding_rank"] = embeddings.factorize_embedding(student, config.embedding_rank)
    if config.max_positions is not None:
        info["positions"] = embeddings.trim_positions(student, config.max_positions)
    if config.keep_heads is not None or config.keep_ffn is not None:
        info["pruning"] = prune_student(config, student, teacher, train, collator)
    if config.linear_rank is not None:  # after pruning: it factorizes the layers pruning already shrank
        from llmzip.shrink.lowrank import factorize_linears

        info["lowrank"] = factorize_linears(student, config.linear_rank, pattern=config.linear_rank_pattern)
    return info


def prune_student(config: DistillConfig, student: Any, teacher: Any, train: Any, collator: Any) -> dict[str, Any]:
    """Heads and FFN neurons to config.keep_heads/keep_ffn, ranked by Taylor importance under the KD loss."""
    from llmzip.shrink import pruning
    from llmzip.shrink.losses import distillation_loss

    rows = train.shuffle(seed=config.seed).select(range(min(len(train), config.prune_batches * config.batch_size)))
    columns = [c for c in rows.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    rows = rows.select_columns(columns)
    batches = [
        collator([rows[j] for j in range(i, min(i + config.batch_size, len(rows)))])
        for i in range(0, len(rows), config.batch_size)
    ]

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            target = teacher(**feats).logits
        return distillation_loss(
            model(**feats).logits, target, batch["labels"], temperature=config.temperature, alpha=config.alpha
        )

    scores = pruning.importance(student, batches, loss_fn)
    info = pruning.prune(student, scores, heads=config.keep_heads, neurons=config.keep_ffn)
    info["importance_examples"] = len(rows)
    return info
