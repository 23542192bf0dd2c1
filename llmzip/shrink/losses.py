"""Distillation losses: small pure functions over logits, unit-tested against hand-computed values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmzip.shrink.teacher_cache import TopK


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


@dataclass(frozen=True)
class PredictionLosses:
    """A task's prediction-layer losses, which distill weights by alpha and 1 − alpha."""

    kd: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]  # (z_S, z_T, attention mask, T)
    ce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z_S, labels)


def sequence_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """One logit vector per sequence: padding never reaches it, so the mask has nothing to do."""
    return soft_target_kl(student_logits, teacher_logits, temperature)


def sequence_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


SEQUENCE_LOSSES = PredictionLosses(kd=sequence_kd, ce=sequence_ce)


def token_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopK, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · KL(softmax(z_T/T) ‖ softmax(z_S/T)) per token position, averaged over real (mask = 1) tokens.

    Every position predicts a next token, the last one included, so all real positions are scored. Averaging over
    tokens (not sequences) keeps the loss on the scale of the token-level CE whatever the window length.
    """
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    if isinstance(teacher_logits, TopK):
        # A cached top-k teacher: its distribution renormalised over its k most likely tokens (the tail it drops
        # holds little mass at T ≈ 1), against the student's full-vocabulary log-probabilities at those tokens.
        log_t = F.log_softmax(teacher_logits.values.float() / t, dim=-1)
        per_token = (log_t.exp() * (log_t - log_s.gather(-1, teacher_logits.indices))).sum(-1)
    else:
        log_t = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
        per_token = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1) * (t * t)


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each labelled position (a token classifier's; positions labelled -100 are not scored)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


TOKEN_LOSSES = PredictionLosses(kd=token_kl, ce=token_ce)


def _token_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, S] attention mask → weights broadcastable to [B, S, H], as float."""
    return mask.to(like.dtype).unsqueeze(-1)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real (non-padding) tokens, TinyBERT's hidden-state and embedding loss."""
    m = _token_mask(mask, student)
    return ((student - teacher.detach()) ** 2 * m).sum() / (m.sum() * student.shape[-1]).clamp(min=1)


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − cos(h_S, h_T) per real token, averaged: DistilBERT's cosine embedding loss on hidden states."""
    cos = F.cosine_similarity(student, teacher.detach(), dim=-1)
    m = mask.to(cos.dtype)
    return ((1.0 - cos) * m).sum() / m.sum().clamp(min=1)


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between attention maps [B, heads, S, S] over real query/key pairs (TinyBERT's attention loss).

    When head counts differ the maps are averaged over heads first, so a student with fewer heads still
    learns where the teacher's layer attends.
    """
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    pair = (mask[:, None, :, None] * mask[:, None, None, :]).to(student.dtype)
    squared = (student - teacher.detach()) ** 2 * pair
    return squared.sum() / (pair.sum() * student.shape[1]).clamp(min=1)
