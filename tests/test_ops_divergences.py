# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Dense divergences and estimators against torch's own KL and against Monte-Carlo estimates."""

import pytest
import torch
import torch.nn.functional as F

from trl_opd.ops import (
    forward_kl,
    generalized_jsd,
    k1_estimator,
    k1_policy_gradient_loss,
    k3_estimator,
    reverse_kl,
    skew_kl,
    topk_forward_kl,
)


@pytest.fixture
def logps():
    torch.manual_seed(0)
    return torch.randn(3, 5, 17).log_softmax(-1), torch.randn(3, 5, 17).log_softmax(-1)


def torch_kl(p_logp, q_logp):
    """KL(p || q) with torch's own kl_div (input = log q, target = log p)."""
    return F.kl_div(q_logp, p_logp, reduction="none", log_target=True).sum(-1)


def test_beta_end_points_equal_torch_kl(logps):
    teacher, student = logps
    torch.testing.assert_close(generalized_jsd(teacher, student, 0.0), torch_kl(teacher, student))
    torch.testing.assert_close(generalized_jsd(teacher, student, 1.0), torch_kl(student, teacher))
    torch.testing.assert_close(forward_kl(teacher, student), torch_kl(teacher, student))
    torch.testing.assert_close(reverse_kl(teacher, student), torch_kl(student, teacher))


def test_jsd_matches_mixture_definition(logps):
    teacher, student = logps
    beta = 0.3
    mixture = ((1 - beta) * student.exp() + beta * teacher.exp()).log()
    expected = beta * torch_kl(teacher, mixture) + (1 - beta) * torch_kl(student, mixture)
    torch.testing.assert_close(generalized_jsd(teacher, student, beta), expected)
    assert (generalized_jsd(teacher, student, beta) >= 0).all()
    assert torch.allclose(generalized_jsd(teacher, teacher, beta), torch.zeros(3, 5), atol=1e-6)


def test_skew_kl(logps):
    teacher, student = logps
    torch.testing.assert_close(skew_kl(teacher, student, 0.0), torch_kl(teacher, student))
    mix = (0.25 * teacher.exp() + 0.75 * student.exp()).log()
    torch.testing.assert_close(skew_kl(teacher, student, 0.25), torch_kl(teacher, mix))
    with pytest.raises(ValueError):
        skew_kl(teacher, student, 1.0)


def test_sampled_estimators_are_unbiased_for_reverse_kl():
    torch.manual_seed(1)
    student = torch.randn(11).log_softmax(-1)
    teacher = torch.randn(11).log_softmax(-1)
    tokens = torch.multinomial(student.exp(), 200_000, replacement=True)
    exact = torch_kl(student, teacher)
    k1 = k1_estimator(student[tokens], teacher[tokens]).mean()
    k3 = k3_estimator(student[tokens], teacher[tokens])
    assert torch.isclose(k1, exact, atol=0.02)
    assert torch.isclose(k3.mean(), exact, atol=0.02)
    assert (k3 >= 0).all()


def test_k1_policy_gradient_has_the_k1_gradient():
    torch.manual_seed(2)
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(4, 6)
    loss = k1_policy_gradient_loss(student, teacher).sum()
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(grad, -(teacher - student).detach())
    weighted = k1_policy_gradient_loss(student, teacher, old_student_logp=student.detach() + 0.5, importance_clip=2.0)
    torch.testing.assert_close(weighted, k1_policy_gradient_loss(student, teacher) * torch.exp(torch.tensor(-0.5)))


def test_topk_forward_kl(logps):
    torch.manual_seed(3)
    teacher_logits, student_logits = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    full = torch_kl(teacher_logits.log_softmax(-1), student_logits.log_softmax(-1))
    torch.testing.assert_close(topk_forward_kl(teacher_logits, student_logits, 9), full)
    torch.testing.assert_close(topk_forward_kl(teacher_logits, student_logits, 9, tail_bucket=True), full)
    # renormalised over the teacher's top-3, computed by hand
    idx = teacher_logits.topk(3, -1).indices
    t, s = teacher_logits.gather(-1, idx).log_softmax(-1), student_logits.gather(-1, idx).log_softmax(-1)
    torch.testing.assert_close(topk_forward_kl(teacher_logits, student_logits, 3), torch_kl(t, s))
    with pytest.raises(ValueError):
        topk_forward_kl(teacher_logits, student_logits, 10)
