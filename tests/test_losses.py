"""The seed distillation loss against hand-computed values."""

from __future__ import annotations

import math

import torch

from llmzip.shrink.losses import distillation_loss, soft_target_kl


def test_kl_hand_computed_at_t1() -> None:
    student = torch.tensor([[0.0, 0.0]])  # p_S = (0.5, 0.5)
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p_T = (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    assert abs(float(soft_target_kl(student, teacher, 1.0)) - expected) < 1e-6


def test_temperature_softens_and_scales_by_t_squared() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2.0 * math.log(3.0), 0.0]])  # at T=2, p_T = (0.75, 0.25)
    expected = 4.0 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert abs(float(soft_target_kl(student, teacher, 2.0)) - expected) < 1e-6


def test_alpha_mixes_kl_and_hard_label_ce() -> None:
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 1])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    ce = math.log(2.0)
    got = distillation_loss(student, teacher, labels, temperature=1.0, alpha=0.3)
    assert abs(float(got) - (0.3 * kl + 0.7 * ce)) < 1e-6
    assert abs(float(distillation_loss(student, student, labels, temperature=3.0, alpha=1.0))) < 1e-7


def test_gradient_flows_to_student_only() -> None:
    student = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0]], requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=0.5).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None


def test_hidden_losses_ignore_padding() -> None:
    from llmzip.shrink.losses import hidden_cosine, hidden_mse

    s = torch.tensor([[[1.0, 0.0], [5.0, 5.0]]])  # second token is padding
    t = torch.tensor([[[0.0, 1.0], [-9.0, 9.0]]])
    mask = torch.tensor([[1, 0]])
    assert abs(float(hidden_mse(s, t, mask)) - 1.0) < 1e-6  # ((1-0)² + (0-1)²) / 2
    assert abs(float(hidden_cosine(s, t, mask)) - 1.0) < 1e-6  # orthogonal → 1 - 0
    assert float(hidden_cosine(s, s, mask)) < 1e-6


def test_attention_mse_over_real_pairs_and_head_mismatch() -> None:
    from llmzip.shrink.losses import attention_mse

    t = torch.zeros(1, 2, 2, 2)
    s = torch.zeros(1, 2, 2, 2)
    s[0, :, 0, 0] = 1.0  # one real (query 0, key 0) pair differs by 1 in each head
    s[0, :, 1, 1] = 7.0  # padding pair: ignored
    mask = torch.tensor([[1, 0]])
    assert abs(float(attention_mse(s, t, mask)) - 1.0) < 1e-6
    assert abs(float(attention_mse(s[:, :1], t, mask)) - 1.0) < 1e-6  # 1 student head vs 2: head means
