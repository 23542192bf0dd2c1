"""Knowledge-distillation training pieces shared by `distill` and quantization-aware training in `quantize`:
the student wrapper that Trainer optimises, the intermediate-layer losses, and the Trainer subclass.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from llmzip.shrink import students
from llmzip.shrink.losses import SEQUENCE_LOSSES, PredictionLosses, attention_mse, hidden_cosine, hidden_mse
from llmzip.shrink.teacher_cache import CachedStates

FEATURES = ("input_ids", "attention_mask", "token_type_ids")


class StudentWithProjections(nn.Module):
    """What Trainer optimises: the student plus (when narrower) the projections its intermediate losses need."""

    # Trainer reads this when a checkpoint lacks keys: a tied LM head is saved once (DistillTrainer._save) and
    # comes back with the embeddings it shares a Parameter with, so no key needs re-tying.
    _keys_to_ignore_on_save: list[str] | None = None

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
            losses: PredictionLosses = SEQUENCE_LOSSES,
            cached_states: CachedStates | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.teacher = teacher.to(self.args.device).eval()
            self.weights, self.temperature, self.layer_map = weights, temperature, layer_map
            self.cached_logits, self.losses, self.cached_states = cached_logits, losses, cached_states
            # The wrapper's forward takes **features, which Trainer reads as "the model normalises its loss by
            # num_items_in_batch itself"; ours is a per-batch mean, so Trainer must scale it for accumulation.
            self.model_accepts_loss_kwargs = False

        def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
            # The wrapper is no PreTrainedModel, so Trainer writes its raw state dict, which safetensors refuses
            # when the student ties its LM head to its embeddings: save each shared tensor once. Trainer reloads
            # checkpoints non-strictly, and the tied head is the same Parameter, so it comes back with them.
            if state_dict is None:
                state_dict, seen, model = {}, set(), self.model
                assert model is not None  # Trainer was built with one
                for key, value in model.state_dict().items():
                    if value.data_ptr() not in seen:
                        seen.add(value.data_ptr())
                        state_dict[key] = value
            super()._save(output_dir, state_dict=state_dict)

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
                loss = self.losses.ce(out["logits"], labels)
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
            has_logits = self.cached_logits is not None and example_id is not None
            has_states = self.cached_states is not None and example_id is not None and "attention" not in w
            # The teacher runs only for what no cache holds (labels-only training never pays for it).
            online = ("kd" in w and not has_logits) or (needs_states and not has_states)
            teacher_out: Any = None
            teacher_logits = None
            if online:
                with torch.no_grad():
                    teacher_out = self.teacher(
                        **features, output_hidden_states=needs_states, output_attentions="attention" in w
                    )
                teacher_logits = teacher_out.logits
            else:
                device = out["logits"].device
                if "kd" in w:
                    assert self.cached_logits is not None and example_id is not None
                    teacher_logits = self.cached_logits[example_id.cpu()].to(device).float()
                if needs_states:
                    assert self.cached_states is not None and example_id is not None
                    states = self.cached_states.batch(example_id, mask.shape[1])
                    teacher_out = SimpleNamespace(hidden_states={t: h.to(device) for t, h in states.items()})
            parts: dict[str, torch.Tensor] = {}
            if "kd" in w and teacher_logits is not None:
                parts["kd"] = self.losses.kd(out["logits"], teacher_logits, mask, self.temperature)
            if "ce" in w:
                parts["ce"] = self.losses.ce(out["logits"], labels)
            if teacher_out is not None and needs_states:
                parts.update(intermediate_losses(w, out, teacher_out, self.layer_map, mask))
            total = torch.zeros((), device=out["logits"].device)
            for key, value in parts.items():
                total = total + w[key] * value
            return total

    return DistillTrainer
