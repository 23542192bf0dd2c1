"""Distillation losses: small pure functions over logits, unit-tested against hand-computed values."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(z_T/T) ‖ softmax(z_S/T)), averaged over the batch (Hinton et al. 2015).

    The T² factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * (t * t)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """L = α·T²·KL(softmax(z_T/T) ‖ softmax(z_S/T)) + (1−α)·CE(z_S, y)."""
    kd = soft_target_kl(student_logits, teacher_logits.detach(), temperature)
    ce = F.cross_entropy(student_logits, labels)
    return alpha * kd + (1.0 - alpha) * ce
