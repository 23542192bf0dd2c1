"""Building a student from a teacher: a subset of its layers, optionally narrower, initialised from it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llmzip.config import DistillConfig
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


def plan(config: DistillConfig, teacher: PreTrainedModel) -> StudentPlan:
    n = len(layer_stack(teacher)[1])
    if config.layers is not None:
        layers = list(config.layers)
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
        # DistilBERT init: an exact copy of the chosen layers, embeddings and head.
        student = select_layers(copy.deepcopy(teacher), p.layers)
        return student, {"init": "teacher layers", "copied_tensors": len(student.state_dict())}
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
    source = select_layers(copy.deepcopy(teacher), p.layers).state_dict()
    target = student.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    student.load_state_dict(copied, strict=False)
    return student, {"init": "config (narrower); matching tensors copied", "copied_tensors": len(copied)}


class Projections(nn.Module):
    """Learned linear maps from student width to teacher width for hidden-state/embedding losses.

    They are trained with the student (so they live in the training checkpoint for --resume) and dropped when the
    student is saved: they only exist to make the losses comparable.
    """

    def __init__(self, student_width: int, teacher_width: int, count: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList([nn.Linear(student_width, teacher_width) for _ in range(count)])

    def forward(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.maps[index](hidden)
