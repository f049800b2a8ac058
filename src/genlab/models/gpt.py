"""An autoregressive language model trained on next-token cross-entropy.

    loss = -1/(B T) sum_t log p(x_{t+1} | x_{<=t})      (nats per token)

reported also as bits per token (`val/bpt` = loss / ln 2), bits per character of the decoded text
(`val/bpc` = total bits / characters, for every tokenizer: a BPE token holds several characters) and
perplexity per token (`val/ppl` = exp(loss)). AdamW decays only matrices (embeddings and Linear weights, not biases or
LayerNorm gains); the learning rate warms up linearly, then follows a cosine down to
`min_lr_ratio` of its peak (the GPT-2/3 and nanoGPT recipe). The schedule is fixed when a run starts
(`lr_decay_steps` null: that run's length) and kept on resume, also when resumed with more steps.

The vocabulary belongs to the data, so the net's config node is partial (every argument but
`vocab_size`) and the net is built in `configure_model()` from the data module's tokenizer. The
tokenizer is stored in every checkpoint, so `genlab.load_model` and `GPTModule.load_from_checkpoint`
rebuild the net and can decode text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric

from genlab import tokenizers
from genlab.errors import ConfigError, DataError
from genlab.instantiate import instantiate
from genlab.models.optim import matrix_names, weight_decay_groups
from genlab.models.step_logs import log_train_step
from genlab.nets.gpt import GPT
from genlab.tokenizers import Tokenizer

TOKENIZER_KEY = "tokenizer"  # where a checkpoint keeps the tokenizer's state


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """The learning rate's factor at `step`: linear warm-up to 1 over `warmup_steps`, cosine from 1 to
    `min_ratio` until `decay_steps`, then `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """`warmup_cosine` as a LambdaLR `lr_lambda` object, not a function: LambdaLR checkpoints an
    object's attributes, so a resumed run keeps the schedule it started with. "Train it longer"
    (`ckpt_path=<run> trainer.max_steps=<more>`) then continues at `min_ratio` past the old horizon;
    a horizon taken from the new length would put the resumed steps back up a longer cosine (a 5x
    jump in the learning rate at the first resumed step)."""

    def __init__(self, warmup_steps: int, decay_steps: int, min_ratio: float) -> None:
        self.warmup_steps, self.decay_steps, self.min_ratio = warmup_steps, decay_steps, min_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.decay_steps, self.min_ratio)


def warmup_cosine_optimizer(module: L.LightningModule) -> dict[str, Any]:
    """The GPT recipe for `module.net` (GPTModule, VQGPTModule): its `optimizer` node given two parameter
    groups (weight decay on the matrices `module.decayed` only), stepped by `WarmupCosine` from its
    `warmup_steps`, `lr_decay_steps` (null: the run's length) and `min_lr_ratio` hyperparameters."""
    hp = module.hparams
    optimizer = instantiate(hp.optimizer, "model.optimizer")(weight_decay_groups(module.net, module.decayed))
    decay_steps = hp.lr_decay_steps or module.trainer.estimated_stepping_batches
    if not math.isfinite(decay_steps):
        raise ConfigError("model.lr_decay_steps is needed when the run has no length (trainer.max_steps)")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(hp.warmup_steps, int(decay_steps), hp.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_schedule_kept(module: L.LightningModule) -> None:
    """In `on_train_start`: a resumed run's scheduler state (restored before that hook) holds the schedule
    it started with. A schedule key changed on resume would make the learning rate jump: refuse it,
    naming the key."""
    trainer = module.trainer
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    if not isinstance(schedule, WarmupCosine):  # a subclass with a schedule of its own
        return
    started = {
        "warmup_steps": schedule.warmup_steps,
        "min_lr_ratio": schedule.min_ratio,
        "lr_decay_steps": schedule.decay_steps,
    }
    for key, value in started.items():
        asked = module.hparams[key]
        if asked is not None and asked != value:
            raise ConfigError(
                f"model.{key}={asked}, but this run's learning rate schedule started with {value}: "
                f"changing it on resume makes the learning rate jump; resume with model.{key}={value}"
            )
    if module.global_step and trainer.max_steps > schedule.decay_steps:
        rank_zero_info(
            f"The learning rate keeps this run's schedule: cosine decay over {schedule.decay_steps} steps, "
            f"then min_lr_ratio={schedule.min_ratio} of the peak (steps beyond it train at that rate)"
        )


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, where: str = "model.") -> None:
    """Refuse sampling settings that would fail (or sample the least likely tokens) at the first sample."""
    if temperature < 0:
        raise ConfigError(f"{where}temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"{where}top_k must be null or at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"{where}top_p must be null or in (0, 1], got {top_p}")


class TextGeneration:
    """Text from a language model's net: `encode`, `generate(prompt)` and the family contract's
    `sample(n)`. Shared by every module that samples a `genlab.nets.gpt.GPT` (`self.net`) with its
    `self.tokenizer` and the sampling hyperparameters `sample_prompt`, `sample_length`, `temperature`,
    `top_k`, `top_p` (GPTModule, and GPTFeedbackModule's policy)."""

    def characters(self, ids: torch.Tensor) -> torch.Tensor:
        """How many characters the tokens `ids` (any shape) decode to, summed: for bits per character.
        A token's count is that of the UTF-8 characters its bytes start (`Tokenizer.char_counts`)."""
        table = getattr(self, "_char_counts", None)
        if table is None or table.device != ids.device:
            table = torch.from_numpy(self.tokenizer.char_counts()).to(ids.device)
            self._char_counts = table  # a plain attribute: not saved, rebuilt from the tokenizer
        return table[ids].sum()

    def encode(self, text: str) -> torch.Tensor:
        """Token ids `(1, len)` on the model's device; a DataError for characters outside a char vocabulary."""
        return torch.from_numpy(self.tokenizer.encode(text).astype("int64")).to(self.device).unsqueeze(0)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) inside, the caller's mode restored after: a module fresh from
        `load_from_checkpoint` is in train mode, and sampling with dropout on draws from another model."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> str:
        """`prompt` and its sampled continuation (temperature 0: greedy), in eval mode whatever the
        module's. Seed torch for repeatable text."""
        if not prompt:
            raise DataError("generate: the prompt is empty; give at least one character (e.g. '\\n')")
        check_sampling(temperature, top_k, top_p, where="generate: ")
        with self.evaluating():
            out = self.net.generate(self.encode(prompt), max_new_tokens, temperature, top_k, top_p)
        return self.tokenizer.decode(out[0].tolist())

    @torch.no_grad()
    def sample(self, n: int) -> list[str]:
        """`n` continuations of `sample_prompt`, `sample_length` tokens each (the prompt left out), in
        eval mode whatever the module's."""
        try:
            start = self.encode(self.hparams.sample_prompt)
        except DataError:  # e.g. "\n" in a one-line corpus: start from the first token instead of failing
            start = torch.zeros(1, 0, dtype=torch.long, device=self.device)
        if start.shape[1] == 0:
            start = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        start = start.expand(n, -1)
        with self.evaluating():
            out = self.net.generate(
                start, self.hparams.sample_length, self.hparams.temperature, self.hparams.top_k, self.hparams.top_p
            )
        return [self.tokenizer.decode(row) for row in out[:, start.shape[1] :].tolist()]


class GPTModule(TextGeneration, L.LightningModule):
    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        warmup_steps: int = 100,
        lr_decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        sample_prompt: str = "\n",
        sample_length: int = 256,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        compile: bool = False,
    ) -> None:
        """`net`: a partial GPT node missing `vocab_size`. `optimizer`: a partial node taking parameter
        groups (its weight_decay applies to matrices only). `lr_decay_steps` null: the run's length.
        `sample_*`, `temperature`, `top_k`, `top_p`: what `sample(n)` draws for the sample logger.
        `compile`: torch.compile the net once it is built (the entrypoint's `compile` runs earlier,
        before the net exists)."""
        super().__init__()
        check_sampling(temperature, top_k, top_p)
        if sample_length < 1:
            raise ConfigError(f"model.sample_length must be at least 1, got {sample_length}")
        self.save_hyperparameters()
        self.net: GPT | None = None
        self.decayed: frozenset[str] = frozenset()  # names of the matrices, fixed before any sharding
        self.tokenizer: Tokenizer | None = None
        self.val_loss = MeanMetric()  # mean over tokens (and ranks) of the whole validation run
        self.val_chars = MeanMetric()  # characters per token, over the same tokens
        self._tokens_seen, self._last_mark = 0, (0, 0.0)
        self._step_lr, self._paused, self._validation_began = 0.0, 0.0, 0.0

    def build(self, tokenizer: Tokenizer) -> None:
        """Make the net for `tokenizer`'s vocabulary (once)."""
        if self.net is not None:
            if self.tokenizer != tokenizer:
                raise DataError(
                    "the data's vocabulary differs from the one this model was trained with: resume on the "
                    "same text and data.tokenizer, or start a new run"
                )
            return
        self.tokenizer = tokenizer
        self.net = instantiate(self.hparams.net, "model.net")(vocab_size=tokenizer.vocab_size)
        self.decayed = matrix_names(self.net)

    def configure_model(self) -> None:
        if self._trainer is None:  # LightningModule.load_from_checkpoint: on_load_checkpoint builds
            return
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "tokenizer", None) is None:
            raise ConfigError("GPTModule needs a text data module with a tokenizer (e.g. data=text)")
        first = self.net is None
        self.build(datamodule.tokenizer)
        if first and self.hparams.compile:
            self.net.compile()  # in place: state_dict keys stay free of `_orig_mod.`

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TOKENIZER_KEY] = self.tokenizer.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if TOKENIZER_KEY not in checkpoint:
            raise DataError("this checkpoint holds no tokenizer: it was not written by GPTModule")
        self.build(tokenizers.from_state(checkpoint[TOKENIZER_KEY]))

    def configure_optimizers(self) -> dict[str, Any]:
        return warmup_cosine_optimizer(self)

    def on_train_start(self) -> None:
        check_schedule_kept(self)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch  # (B, T) each
        logits = self.net(x)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())  # in fp32 under bf16 autocast

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        # A tensor: Lightning reads it back (a device sync) only on the steps it writes or redraws the bar.
        log_train_step(self, {"train/loss": loss}, batch_size=batch[0].shape[0])
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_lr = self.trainer.optimizers[0].param_groups[0]["lr"]  # before the scheduler moves it on

    def on_train_batch_end(self, outputs: Any, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # Throughput from the host clock every log_every_n_steps: the loss logged at those steps syncs
        # the device anyway, so no extra sync is needed (ThroughputMonitor synchronizes every step).
        # Time spent in validation (and the sampling and checkpoints it triggers) is not training time.
        self._tokens_seen += batch[0].numel()
        every, step, (last_step, last_time) = self.trainer.log_every_n_steps, self.global_step, self._last_mark
        if not every or step % every or step == last_step:  # log_every_n_steps=0: Lightning logs nothing
            return
        now = time.perf_counter()
        if last_step > 0:
            rate = self._tokens_seen * self.trainer.world_size / (now - last_time - self._paused)
            self.log("train/tokens_per_sec", rate, batch_size=1)
            self.log("train/lr", self._step_lr, batch_size=1)  # the rate this step's update used
        self._tokens_seen, self._last_mark, self._paused = 0, (step, now), 0.0

    def on_validation_start(self) -> None:
        self._validation_began = time.perf_counter()

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "fit":  # validation inside fit (not trainer.validate)
            self._paused += time.perf_counter() - self._validation_began

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        tokens = batch[1].numel()
        self.val_loss.update(self.loss(batch), weight=tokens)
        self.val_chars.update(self.characters(batch[1]) / tokens, weight=tokens)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # averaged over every rank's tokens
        chars_per_token = self.val_chars.compute()
        self.val_loss.reset()
        self.val_chars.reset()
        metrics = {
            "val/loss": loss,
            "val/bpc": loss / math.log(2) / chars_per_token,  # total bits / total characters
            "val/bpt": loss / math.log(2),
            "val/ppl": loss.exp(),
        }
        self.log_dict(metrics, sync_dist=True)  # equal on every rank already; a no-op mean that spares a warning
