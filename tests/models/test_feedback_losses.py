"""The feedback losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.models.feedback_losses import advantages, dpo_loss, kl_k3, policy_gradient_loss


def test_group_normalised_advantages_equal_hand_computed_values() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    # group 1: mean 3, sample std sqrt((4 + 1 + 0 + 9) / 3) = sqrt(14/3) = 2.1602
    expected = torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (math.sqrt(14 / 3) + 1e-4)
    got = advantages(rewards, "grpo")
    assert torch.allclose(got[0], expected)
    assert torch.equal(got[1], torch.zeros(4))  # a group that all tie teaches nothing


def test_leave_one_out_advantages_equal_hand_computed_values() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    # r_i minus the mean of the other three: 1 - 11/3, 2 - 10/3, 3 - 3, 6 - 2
    expected = torch.tensor([[1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0]])
    assert torch.allclose(advantages(rewards, "rloo"), expected)
    with pytest.raises(ValueError, match="group of at least 2"):
        advantages(torch.ones(3, 1))


def test_dpo_loss_equals_hand_computed_values() -> None:
    chosen, rejected = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    ref_chosen, ref_rejected = torch.tensor([-11.0, -4.0]), torch.tensor([-11.0, -4.0])
    # pair 1: beta * ((-10 + 11) - (-12 + 11)) = 0.5 * 2 = 1; pair 2: 0.5 * (0 - 1) = -0.5
    loss, accuracy = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5))) / 2  # -log sigmoid(m) = log(1 + e^-m)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == 0.5
    # at the reference, every pair's margin is 0: loss log 2
    same, _ = dpo_loss(ref_chosen, ref_rejected, ref_chosen, ref_rejected, beta=0.5)
    assert same.item() == pytest.approx(math.log(2))


def test_k3_is_zero_at_the_reference_and_estimates_the_kl_without_bias() -> None:
    logp = torch.log(torch.tensor([0.2, 0.5, 0.3]))
    assert torch.equal(kl_k3(logp, logp), torch.zeros(3))
    ref = torch.log(torch.tensor([0.4, 0.4, 0.2]))
    d = ref - logp
    assert torch.allclose(kl_k3(logp, ref), d.exp() - d - 1)
    assert (kl_k3(logp, ref) >= 0).all()
    # E_{x ~ p}[k3(x)] = KL(p || ref) exactly (the expectation of exp(d) is 1)
    p = logp.exp()
    assert (p * kl_k3(logp, ref)).sum().item() == pytest.approx((p * (logp - ref)).sum().item(), rel=1e-5)


def test_policy_gradient_loss_has_the_reinforce_gradient() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    advantage = torch.tensor([2.0, -1.0])
    loss, kl = policy_gradient_loss(logp, logp.detach(), advantage, beta=0.1)
    assert loss.item() == pytest.approx(-(2.0 * 2 - 1.0 * 2) / 4)  # -mean(A * 1) over the 4 tokens
    assert kl.item() == 0.0
    loss.backward()
    # d/dlogp of -A * ratio / 4 is -A / 4; the k3 term's gradient is 0 at the reference
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))
