"""Knowledge-distillation training pieces shared by `distill` and quantization-aware training in `quantize`:
the student wrapper that Trainer optimises, the intermediate-layer losses, and the Trainer subclass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmzip import students
from llmzip.losses import attention_mse, hidden_cosine, hidden_mse, soft_target_kl

FEATURES = ("input_ids", "attention_mask", "token_type_ids")


class StudentWithProjections(nn.Module):
    """What Trainer optimises: the student plus (when narrower) the projections its intermediate losses need."""

    def __init__(
        self, student: nn.Module, projections: students.Projections | None, *, hidden: bool, attentions: bool
    ) -> None:
        super().__init__()
        self.student, self.projections = student, projections
        self.hidden, self.attentions = hidden, attentions

    def forward(self, **features: torch.Tensor) -> dict[str, Any]:
        out = self.student(**features, output_hidden_states=self.hidden, output_attentions=self.attentions)
        result: dict[str, Any] = {"logits": out.logits}
        if self.hidden:
            states = out.hidden_states
            if self.projections is not None:
                states = tuple(self.projections(i, h) for i, h in enumerate(states))
            result["hidden"] = states
        if self.attentions:
            result["attentions"] = out.attentions
        return result


def intermediate_losses(
    weights: dict[str, float], student: dict[str, Any], teacher: Any, layer_map: list[int], mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Hidden-state, embedding and attention losses over the student↔teacher layer map, averaged over layers."""
    pairs = list(enumerate(layer_map, start=1))  # (student output index, teacher output index), 1-based
    t_states, s_states = teacher.hidden_states, student.get("hidden")
    parts: dict[str, torch.Tensor] = {}
    if s_states is not None and "hidden_mse" in weights:
        parts["hidden_mse"] = torch.stack([hidden_mse(s_states[s], t_states[t], mask) for s, t in pairs]).mean()
    if s_states is not None and "hidden_cos" in weights:
        parts["hidden_cos"] = torch.stack([hidden_cosine(s_states[s], t_states[t], mask) for s, t in pairs]).mean()
    if s_states is not None and "embedding" in weights:
        parts["embedding"] = hidden_mse(s_states[0], t_states[0], mask)
    if "attention" in weights:
        t_att, s_att = teacher.attentions, student["attentions"]
        parts["attention"] = torch.stack([attention_mse(s_att[s - 1], t_att[t - 1], mask) for s, t in pairs]).mean()
    return parts


def distill_trainer_class() -> type:
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """Trainer whose loss is the weighted sum of the configured distillation losses."""

        def __init__(
            self,
            *args: Any,
            teacher: nn.Module,
            weights: dict[str, float],
            temperature: float,
            layer_map: list[int],
            cached_logits: torch.Tensor | None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.teacher = teacher.to(self.args.device).eval()
            self.weights, self.temperature, self.layer_map = weights, temperature, layer_map
            self.cached_logits = cached_logits

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, torch.Tensor],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            features = {k: v for k, v in inputs.items() if k in FEATURES}
            labels = inputs["labels"]
            out = model(**features)
            if not model.training:  # evaluation scores the student alone: hard-label CE, no teacher needed
                loss = F.cross_entropy(out["logits"], labels)
                return (loss, {"logits": out["logits"]}) if return_outputs else loss
            loss = self._loss(out, features, labels, inputs.get("example_id"))
            return (loss, {"logits": out["logits"]}) if return_outputs else loss

        def _loss(
            self,
            out: dict[str, Any],
            features: dict[str, torch.Tensor],
            labels: torch.Tensor,
            example_id: torch.Tensor | None,
        ) -> torch.Tensor:
            w, mask = self.weights, features["attention_mask"]
            needs_states = any(k in w for k in ("hidden_mse", "hidden_cos", "embedding", "attention"))
            teacher_out = None
            teacher_logits = None
            if self.cached_logits is not None and example_id is not None and not needs_states:
                teacher_logits = self.cached_logits[example_id.cpu()].to(out["logits"].device).float()
            elif "kd" in w or needs_states:  # labels-only training never pays for a teacher forward
                with torch.no_grad():
                    teacher_out = self.teacher(
                        **features, output_hidden_states=needs_states, output_attentions="attention" in w
                    )
                teacher_logits = teacher_out.logits
            parts: dict[str, torch.Tensor] = {}
            if "kd" in w and teacher_logits is not None:
                parts["kd"] = soft_target_kl(out["logits"], teacher_logits, self.temperature)
            if "ce" in w:
                parts["ce"] = F.cross_entropy(out["logits"], labels)
            if teacher_out is not None and needs_states:
                parts.update(intermediate_losses(w, out, teacher_out, self.layer_map, mask))
            total = torch.zeros((), device=out["logits"].device)
            for key, value in parts.items():
                total = total + w[key] * value
            return total

    return DistillTrainer
