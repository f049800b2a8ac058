"""The math of fine-tuning a generator toward a reward, apart from any network.

Inputs are per-token log-probabilities of sampled completions, `(N, L)` (N sequences of L new
tokens), under the policy being trained (with gradient) and under the frozen reference.

- `advantages`: how much better each of G completions of the same prompt scored than its group.
    grpo:  A_i = (r_i - mean_j r_j) / (std_j r_j + eps)      GRPO, Shao et al. 2024 (DeepSeekMath), eq. 4
           (std with Bessel's correction, as TRL's GRPOTrainer: torch.std)
    rloo:  A_i = r_i - mean_{j != i} r_j                       REINFORCE with a leave-one-out baseline
           (Kool et al. 2019; Ahmadian et al. 2024): unbiased, no rescaling
- `kl_k3`: the per-token estimate of KL(policy || reference) from samples of the policy,
    k3 = exp(d) - d - 1 with d = log ref(x_t) - log policy(x_t)
  (Schulman 2020, "Approximating KL divergence"): never negative, unbiased, lower variance than -d.
  It is 0 exactly where the policy equals the reference.
- `policy_gradient_loss`: one on-policy step of GRPO (one update per batch of samples, so the PPO
  ratio is 1 and clipping never acts): mean over tokens of -A * ratio + beta * k3, where
  ratio = exp(logp - logp.detach()) is 1 in value and has the gradient of logp.
- `dpo_loss`: Rafailov et al. 2023, eq. 7, on sequence log-probabilities (sums over tokens):
    -log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ADVANTAGES = ("grpo", "rloo")


def advantages(rewards: torch.Tensor, kind: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """`rewards` `(P, G)`: G completions for each of P prompts. Returns `(P, G)`; a group whose
    completions all scored the same gets zero advantage (nothing to learn from it)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"advantages: rewards must be (prompts, group) with a group of at least 2, got {rewards.shape}"
        )
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if kind == "grpo":
        return centred / (rewards.std(dim=1, keepdim=True) + eps)
    if kind == "rloo":
        group = rewards.shape[1]
        return centred * group / (group - 1)  # r_i - (sum_j r_j - r_i) / (G - 1)
    raise ValueError(f"advantages: kind must be one of {ADVANTAGES}, got {kind!r}")


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference), same shape as the inputs, >= 0."""
    d = ref_logp - logp
    return torch.expm1(d) - d  # exp(d) - 1 - d, exact near d = 0


def policy_gradient_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor, advantage: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean per-token k3) for `logp`, `ref_logp` `(N, L)` and `advantage` `(N,)`. Every
    completion has the same length L, so the mean over sequences of per-sequence token means (GRPO)
    and the mean over all tokens (DAPO) are the same number."""
    ratio = torch.exp(logp - logp.detach())  # 1, with the gradient of logp
    kl = kl_k3(logp, ref_logp)
    loss = (-advantage[:, None] * ratio + beta * kl).mean()
    return loss, kl.detach().mean()


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, fraction of pairs the implicit reward already ranks right) for sequence
    log-probabilities `(N,)` of the preferred and the other completion of N pairs."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))  # the implicit reward's difference
    return -F.logsigmoid(margin).mean(), (margin > 0).float().mean()
