"""Fine-tune a trained GPT so its samples score higher on a reward, staying near what it learned.

    python -m genlab.train model=gpt_feedback model.init_from=logs/gpt/<run>              # GRPO
    python -m genlab.train model=gpt_feedback model.init_from=logs/gpt/<run> model.objective=dpo

The policy starts as the GPT of `init_from` (a run folder or .ckpt of `model=gpt`, or of an earlier
`gpt_feedback` run); a frozen copy of it is the reference. Each step:

1. prompts: the first `prompt_length` tokens of `prompts_per_step` training windows of the base
   data (or the strings in `prompts`);
2. rollout: `group_size` completions of `completion_length` tokens per prompt, sampled from the
   policy (KV cache, `rollout_temperature`), decoded and scored by `reward` (genlab.rewards);
3. update (genlab.models.feedback_losses):
   grpo: group-normalised advantages (or rloo: a leave-one-out baseline) times the completions'
         log-probabilities, plus `kl_coef` times the k3 estimate of KL(policy || reference) per token;
   dpo:  the best and the worst completion of each group are a preference pair (a tie is dropped),
         DPO's loss with `dpo_beta` (online DPO: the pairs come from the current policy).

Validation keeps the base family's figures on the base data (`val/loss`, `val/bpc`, `val/bpt`, `val/ppl`: how
much the language model degraded) and adds `val/reward`, `val/reward_std` and `val/kl` (the exact
per-token KL(policy || reference), averaged over the policy's own completions) for the same fixed
prompts and seed every time. Sample tables with rewards (prompt | completion | reward) are written
to `<run>/samples/feedback_before.txt` and `feedback_after.txt` (and to W&B/TensorBoard).

The reference is saved in every checkpoint (`reference.*` beside the policy's `net.*`): a resumed
run continues against the same reference even if the `init_from` run was trained on since or is gone, and a
checkpoint alone rebuilds the model (`genlab.load_model`; `make sample` draws from the policy).
Dropout is off in both nets: the completions and their log-probabilities must come from the same
distribution.
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchmetrics import MeanMetric

from genlab import tokenizers
from genlab.checkpoints import RESUME_ENV, is_checkpoint, load_model, read_checkpoint
from genlab.errors import ConfigError, DataError
from genlab.instantiate import instantiate, locate
from genlab.models.feedback_losses import ADVANTAGES, advantages, dpo_loss, kl_k3, policy_gradient_loss
from genlab.models.gpt import TOKENIZER_KEY, TextGeneration, check_sampling
from genlab.models.optim import matrix_names, weight_decay_groups
from genlab.models.step_logs import log_train_step
from genlab.nets.gpt import GPT
from genlab.tokenizers import Tokenizer

NET_KEY = "gpt_feedback_net"  # where a checkpoint keeps the policy's net node (the base GPT's, vocab_size aside)
BASE_TARGETS = ("genlab.models.gpt.GPTModule", "genlab.models.gpt_feedback.GPTFeedbackModule")
OBJECTIVES = ("grpo", "dpo")


def resolve_init_from(init_from: str) -> Path:
    """A run folder's `checkpoints/last.ckpt`, or the checkpoint itself; a ConfigError naming the key."""
    path = Path(init_from)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not is_checkpoint(path):
        raise ConfigError(
            f"model.init_from: no checkpoint at '{path}' (give a GPT run folder or .ckpt, e.g. logs/gpt/<run>)"
        )
    return path


def names_prompts(reward: Any) -> bool:
    try:
        return "prompts" in inspect.signature(reward).parameters
    except (TypeError, ValueError):  # a callable without a signature: the plain contract
        return False


def completion_logprobs(net: GPT, tokens: torch.Tensor, prompt_length: int, temperature: float) -> torch.Tensor:
    """log p(token_t | tokens before t) for the completion tokens (those after `prompt_length`) of
    `tokens` `(N, T)`, under the net's distribution at `temperature`: `(N, T - prompt_length)`."""
    logits = net(tokens[:, :-1])[:, prompt_length - 1 :]  # (N, L, V): position t predicts token t + 1
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # fp32 under bf16 autocast
    return logp.gather(-1, tokens[:, prompt_length:, None]).squeeze(-1)


class GPTFeedbackModule(TextGeneration, L.LightningModule):
    def __init__(
        self,
        init_from: str | None,
        reward: dict[str, Any],
        optimizer: dict[str, Any],
        objective: str = "grpo",
        advantage: str = "grpo",
        group_size: int = 8,
        prompts_per_step: int = 4,
        prompt_length: int = 16,
        completion_length: int = 48,
        prompts: list[str] | None = None,
        rollout_temperature: float = 1.0,
        kl_coef: float = 0.05,
        dpo_beta: float = 0.1,
        warmup_steps: int = 10,
        val_prompts: int = 8,
        val_seed: int = 0,
        sample_prompt: str = "\n",
        sample_length: int = 256,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> None:
        """`init_from`: the GPT to fine-tune (run folder or .ckpt; read when training starts).
        `reward`: a `_target_` node of a callable `(samples: list[str]) -> list[float]` (genlab.rewards;
        one taking the keyword `prompts` is also given each sample's prompt text).
        `objective`: grpo (policy gradient + KL penalty) or dpo. `advantage` (grpo): grpo (group mean
        and std) or rloo (leave-one-out mean). `group_size`: completions per prompt (dpo pairs the
        best and the worst). `prompts`: fixed prompt strings instead of prefixes of the data.
        `kl_coef`: weight of the KL penalty (grpo); `dpo_beta`: DPO's beta. `val_prompts`: prompts
        (each with group_size completions) scored at every validation, from the first validation batch.
        `sample_*`, `temperature`, `top_k`, `top_p`: what `sample(n)` draws, as GPTModule's."""
        super().__init__()
        if not init_from:
            raise ConfigError("model.init_from is required: the GPT run to fine-tune (a run folder or .ckpt)")
        if objective not in OBJECTIVES:
            raise ConfigError(f"model.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if advantage not in ADVANTAGES:
            raise ConfigError(f"model.advantage must be one of {', '.join(ADVANTAGES)}, got {advantage!r}")
        if group_size < 2:
            raise ConfigError(
                f"model.group_size must be at least 2 (completions compared per prompt), got {group_size}"
            )
        for key, value in (("prompts_per_step", prompts_per_step), ("prompt_length", prompt_length)):
            if value < 1:
                raise ConfigError(f"model.{key} must be at least 1, got {value}")
        if completion_length < 1 or val_prompts < 1:
            raise ConfigError("model.completion_length and model.val_prompts must be at least 1")
        if rollout_temperature <= 0:
            raise ConfigError(f"model.rollout_temperature must be > 0 (the policy samples), got {rollout_temperature}")
        if prompts is not None and not (prompts and all(prompts)):
            raise ConfigError("model.prompts: give a list of non-empty strings, or null for prefixes of the data")
        if "_target_" not in reward:
            raise ConfigError("model.reward needs a _target_: a function (samples: list[str]) -> list[float]")
        check_sampling(temperature, top_k, top_p)
        self.save_hyperparameters()
        self.reward_fn = instantiate(reward, "model.reward")
        # a reward naming `prompts` is given each completion's prompt text (genlab.rewards); read on the
        # function itself, since instantiate's partial hides its signature
        self.reward_takes_prompts = names_prompts(locate(reward["_target_"]))
        self.net: GPT | None = None  # the policy
        self.reference: GPT | None = None  # frozen; in the state_dict, never in the optimizer
        self.net_node: dict[str, Any] | None = None
        self.tokenizer: Tokenizer | None = None
        self.decayed: frozenset[str] = frozenset()
        self.val_loss, self.val_kl, self.val_chars = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_reward, self.val_reward_sq = MeanMetric(), MeanMetric()  # E[r], E[r^2]: the spread over ranks
        self.metric_notes = {
            "reward": f"mean reward of the policy's completions ({reward['_target_']})",
            "reward_std": "spread of that reward over the completions",
            "kl": "KL(policy || reference) per generated token, nats (exact at each sampled context)",
        }

    # --- building: from init_from when training starts, or from a checkpoint of this module -------------

    def build(self, net_node: dict[str, Any], tokenizer: Tokenizer) -> None:
        """Make the policy and reference nets (once) for the base GPT's `net_node` and vocabulary."""
        if self.net is not None:
            if net_node != self.net_node or tokenizer != self.tokenizer:
                raise DataError("this checkpoint's GPT (size or vocabulary) differs from model.init_from's")
            return
        self.net_node, self.tokenizer = net_node, tokenizer
        make = instantiate(net_node, "model.init_from's net")
        self.net, self.reference = make(vocab_size=tokenizer.vocab_size), make(vocab_size=tokenizer.vocab_size)
        self.reference.requires_grad_(False)
        self.decayed = matrix_names(self.net)
        for length in self._prompt_lengths():
            self._check_length(length)
        self.train(self.training)  # both nets in eval mode (no dropout), whatever the module's mode

    def load_base(self, init_from: str) -> None:
        """Policy and reference = the GPT in `init_from` (a GPT run, or a gpt_feedback run's policy)."""
        path = resolve_init_from(init_from)
        config = read_checkpoint(path).get("genlab", {}).get("config", {})
        target = config.get("model", {}).get("_target_")
        if target not in BASE_TARGETS:
            family = str(target).rsplit(".", 1)[-1] if target else "a non-genlab"
            raise ConfigError(
                f"model.init_from: '{path}' holds a {family} checkpoint; give a GPT run (trained with model=gpt)"
            )
        base = load_model(path)
        node = base.net_node if isinstance(base, GPTFeedbackModule) else dict(base.hparams.net)
        self.build(node, base.tokenizer)
        self.net.load_state_dict(base.net.state_dict())
        self.reference.load_state_dict(base.net.state_dict())

    def configure_model(self) -> None:
        if self._trainer is None:  # LightningModule.load_from_checkpoint: on_load_checkpoint builds
            return
        datamodule = self.trainer.datamodule
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("GPTFeedbackModule needs the base GPT's text data module (e.g. data=text)")
        resume = os.environ.get(RESUME_ENV)  # set by the entrypoint; Lightning restores the weights after this hook
        if self.net is None and resume and Path(resume).is_file():
            self.on_load_checkpoint(read_checkpoint(resume))  # the nets' shapes: init_from need not exist any more
        if self.net is None:
            self.load_base(self.hparams.init_from)
        if tokenizer != self.tokenizer:
            raise DataError(
                "the data's vocabulary differs from the base GPT's (model.init_from): give the data config "
                "the base run was trained with (its config.yaml's data: section)"
            )
        block_size = getattr(datamodule, "block_size", None)
        if block_size is not None and block_size > self.net.block_size:
            raise ConfigError(
                f"data.block_size={block_size} exceeds the base GPT's block_size {self.net.block_size}: "
                f"set data.block_size={self.net.block_size} (as the base run had)"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TOKENIZER_KEY] = self.tokenizer.state()
        checkpoint[NET_KEY] = self.net_node

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if NET_KEY not in checkpoint or TOKENIZER_KEY not in checkpoint:
            raise DataError("this checkpoint was not written by GPTFeedbackModule (no net node or tokenizer)")
        self.build(checkpoint[NET_KEY], tokenizers.from_state(checkpoint[TOKENIZER_KEY]))

    def train(self, mode: bool = True) -> GPTFeedbackModule:
        super().train(mode)
        for net in (self.net, self.reference):
            if net is not None:
                net.eval()  # no dropout: sampling and the update see one distribution; the reference is fixed
        return self

    def configure_optimizers(self) -> dict[str, Any]:
        groups = weight_decay_groups(self.net, self.decayed)  # the policy only: the reference is not trained
        optimizer = instantiate(self.hparams.optimizer, "model.optimizer")(groups)
        warmup = self.hparams.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- prompts, rollouts, rewards ---------------------------------------------------------------------

    def _prompt_lengths(self) -> list[int]:
        if self.hparams.prompts is None:
            return [self.hparams.prompt_length]
        return [len(self.tokenizer.encode(p)) for p in self.hparams.prompts]

    def _check_length(self, prompt_length: int) -> None:
        total = prompt_length + self.hparams.completion_length
        if total > self.net.block_size:
            raise ConfigError(
                f"a prompt of {prompt_length} tokens + model.completion_length={self.hparams.completion_length} "
                f"= {total} exceeds the base GPT's block_size {self.net.block_size}: shorten one of them"
            )

    def prompts_for(self, x: torch.Tensor, count: int, offset: int = 0) -> list[torch.Tensor]:
        """`count` prompts as token tensors `(1, length)`: the first prompt_length tokens of windows
        of the data batch `x` `(B, T)`, or the configured strings (in turn, from `offset`)."""
        if self.hparams.prompts is None:
            if count > x.shape[0]:
                raise ConfigError(f"{count} prompts asked of a data batch of {x.shape[0]}: raise data.batch_size")
            return list(x[:count, : self.hparams.prompt_length].split(1))
        texts = self.hparams.prompts
        return [self.encode(texts[(offset + i) % len(texts)]) for i in range(count)]

    def rollout(self, prompts: list[torch.Tensor], group: int) -> tuple[list[torch.Tensor], list[str]]:
        """`group` completions per prompt, in prompt order: the full token rows, as one tensor
        `(k * group, T)` per run of k consecutive prompts of equal length (one batched generate each:
        prompts from the data are one run), and the decoded completions (prompt left out)."""
        runs: list[list[torch.Tensor]] = []
        for prompt in prompts:
            if runs and runs[-1][0].shape[1] == prompt.shape[1]:
                runs[-1].append(prompt)
            else:
                runs.append([prompt])
        rows, texts = [], []
        for run in runs:
            start = torch.cat(run).repeat_interleave(group, dim=0)  # (k * group, T): each prompt's group together
            out = self.net.generate(start, self.hparams.completion_length, self.hparams.rollout_temperature)
            rows.append(out)
            texts += [self.tokenizer.decode(row) for row in out[:, start.shape[1] :].tolist()]
        return rows, texts

    def score(self, texts: list[str], rows: list[torch.Tensor]) -> torch.Tensor:
        """The reward of each completion, `(len(texts),)` float32 on the model's device. `rows`: the
        rollout's token rows, whose prompts a reward taking `prompts` is given (decoded)."""
        if self.reward_takes_prompts:
            length = self.hparams.completion_length
            prompts = [self.tokenizer.decode(row[: r.shape[1] - length]) for r in rows for row in r.tolist()]
            scores = self.reward_fn(texts, prompts=prompts)
        else:
            scores = self.reward_fn(texts)
        name = self.hparams.reward["_target_"]
        if not hasattr(scores, "__len__") or len(scores) != len(texts):
            got = len(scores) if hasattr(scores, "__len__") else type(scores).__name__
            raise ConfigError(
                f"model.reward: {name} returned {got} scores for {len(texts)} samples; a reward returns one per sample"
            )
        scores = torch.as_tensor([float(s) for s in scores], dtype=torch.float32, device=self.device)
        if not torch.isfinite(scores).all():
            raise ConfigError(f"model.reward: {name} returned a NaN or infinite score")
        return scores

    def logprobs(self, rows: list[torch.Tensor], net: GPT) -> torch.Tensor:
        """Per-token log-probabilities of every completion under `net`: `(N, completion_length)`."""
        temperature = self.hparams.rollout_temperature
        return torch.cat(
            [completion_logprobs(net, r, r.shape[1] - self.hparams.completion_length, temperature) for r in rows]
        )

    # --- training -------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        count, group = self.hparams.prompts_per_step, self.hparams.group_size
        prompts = self.prompts_for(batch[0], count, offset=self.global_step * count)
        with torch.no_grad():
            rows, texts = self.rollout(prompts, group)
        rewards = self.score(texts, rows).view(count, group)  # (P, G)
        logp = self.logprobs(rows, self.net)  # (P*G, L), with gradient
        with torch.no_grad():
            ref_logp = self.logprobs(rows, self.reference)
        metrics = {"train/reward": rewards.mean(), "train/reward_std": rewards.std()}
        if self.hparams.objective == "grpo":
            advantage = advantages(rewards, self.hparams.advantage).flatten()  # (P*G,)
            loss, kl = policy_gradient_loss(logp, ref_logp, advantage, self.hparams.kl_coef)
        else:
            loss, kl, more = self._dpo_step(logp, ref_logp, rewards)
            metrics |= more
        log_train_step(self, {"train/loss": loss, **metrics, "train/kl": kl}, batch_size=rewards.numel())
        return loss

    def _dpo_step(
        self, logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """DPO on (best, worst) of each group; groups whose completions all tie are left out.
        Returns (loss, mean k3 KL, {train/pairs: fraction of groups kept, train/dpo_accuracy})."""
        count, group = rewards.shape
        seq, ref_seq = logp.sum(-1).view(count, group), ref_logp.sum(-1).view(count, group)  # (P, G)
        rows = torch.arange(count, device=rewards.device)
        best, worst = rewards.argmax(dim=1), rewards.argmin(dim=1)
        keep = rewards.max(dim=1).values > rewards.min(dim=1).values
        kl = kl_k3(logp.detach(), ref_logp).mean()
        metrics = {"train/pairs": keep.float().mean()}
        if not keep.any():
            return 0.0 * seq.sum(), kl, metrics  # every parameter still in the graph (DDP waits for all gradients)
        chosen, rejected = (rows[keep], best[keep]), (rows[keep], worst[keep])
        loss, accuracy = dpo_loss(seq[chosen], seq[rejected], ref_seq[chosen], ref_seq[rejected], self.hparams.dpo_beta)
        return loss, kl, metrics | {"train/dpo_accuracy": accuracy}

    # --- validation: the base data's loss, and the reward and KL on fixed prompts -------------------------

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.val_loss.update(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()), weight=y.numel())
        self.val_chars.update(self.characters(y) / y.numel(), weight=y.numel())  # characters per token
        if batch_idx == 0:
            rewards, kl = self.evaluate_prompts(self.prompts_for(x, min(self.hparams.val_prompts, x.shape[0])))
            self.val_reward.update(rewards)
            self.val_reward_sq.update(rewards**2)
            self.val_kl.update(kl)

    @torch.no_grad()
    def evaluate_prompts(self, prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards `(N,)`, exact per-token KL(policy || reference) `(N, L)`) of group_size completions
        per prompt, drawn with `val_seed` (the training RNG is left as it was)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.hparams.val_seed)
            rows, texts = self.rollout(prompts, self.hparams.group_size)
        kl = []
        temperature, length = self.hparams.rollout_temperature, self.hparams.completion_length
        for r in rows:  # (k * G, T) each
            start = r.shape[1] - length - 1
            logp = F.log_softmax(self.net(r[:, :-1])[:, start:].float() / temperature, dim=-1)  # (G, L, V)
            ref = F.log_softmax(self.reference(r[:, :-1])[:, start:].float() / temperature, dim=-1)
            kl.append((logp.exp() * (logp - ref)).sum(-1))
        return self.score(texts, rows), torch.cat(kl)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        mean, mean_sq = self.val_reward.compute(), self.val_reward_sq.compute()
        metrics = {
            "val/loss": loss,
            "val/bpc": loss / math.log(2) / self.val_chars.compute(),  # bits per character, as GPTModule's
            "val/bpt": loss / math.log(2),
            "val/ppl": loss.exp(),
            "val/reward": mean,
            "val/reward_std": (mean_sq - mean**2).clamp_min(0).sqrt(),
            "val/kl": self.val_kl.compute(),
        }
        for metric in (self.val_loss, self.val_chars, self.val_reward, self.val_reward_sq, self.val_kl):
            metric.reset()
        self.log_dict(metrics, sync_dist=True)

    # --- sample tables before and after -------------------------------------------------------------------

    def on_train_start(self) -> None:
        self.write_table("before" if self.global_step == 0 else f"resumed-step={self.global_step}")

    def on_train_end(self) -> None:
        self.write_table("after")

    @torch.no_grad()
    def write_table(self, tag: str) -> None:
        """One completion per validation prompt with its reward, to `samples/feedback_<tag>.txt` and
        to the loggers that show tables. The same prompts and seed every time: before/after compare."""
        if not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        x, _ = next(iter(self.trainer.datamodule.val_dataloader()))
        prompts = self.prompts_for(x.to(self.device), min(self.hparams.val_prompts, x.shape[0]))
        was_training = self.training
        self.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.hparams.val_seed)
            rows, texts = self.rollout(prompts, 1)
        self.train(was_training)
        rewards = self.score(texts, rows).tolist()
        rows = [[self.tokenizer.decode(p[0].tolist()), t, r] for p, t, r in zip(prompts, texts, rewards, strict=True)]
        folder = Path(self.trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        mean = sum(rewards) / len(rewards)
        lines = [f"# step {self.global_step}, mean reward {mean:.4g} ({self.hparams.reward['_target_']})"]
        lines += [f"reward {r:.4g}\nprompt:     {p!r}\ncompletion: {t!r}\n" for p, t, r in rows]
        (folder / f"feedback_{tag}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key=f"feedback_{tag}", columns=["prompt", "completion", "reward"], data=rows)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(f"feedback_{tag}", "\n\n".join(lines), self.global_step)
