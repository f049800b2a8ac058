"""Every family with a learning-rate schedule keeps it continuous when a run is resumed with more
steps ("train it longer": `ckpt_path=<run> trainer.max_steps=<more>`, as the end-of-run summary
suggests): the rate of the first resumed step is the rate the stopped run had set for its next step."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from conftest import tiny_gpt_data_args

from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.gpt import warmup_cosine

GPT = ("model=gpt", "model.net.n_layer=1", "model.net.n_head=1", "model.net.n_embd=16", "model.warmup_steps=2")
GPT_DATA = ("data.block_size=16", "data.batch_size=2")  # the embedded corpus
GAN = ("model=gan", "model.generator.hidden_channels=[16,8]", "model.discriminator.hidden_channels=[8,16]")


def gan_schedule(total_iters: int) -> str:
    """A linear decay over the run's G steps, as a user would give it (raised with the run's length)."""
    return (
        "model.scheduler={_target_: torch.optim.lr_scheduler.LinearLR, _partial_: true, start_factor: 1.0, "
        f"end_factor: 0.1, total_iters: {total_iters}}}"
    )


FLOW = ("model=flow", "model.flow.steps_per_level=1", "model.flow.hidden_channels=8", "model.warmup_steps=6")


class Rates(L.Callback):
    """The learning rate of each optimizer (first group): at each step's start, the rate that step uses;
    at the end of fit, the rate the stopped run set for its next step."""

    def __init__(self) -> None:
        self.at_step: dict[int, list[float]] = {}
        self.next: list[float] = []

    @staticmethod
    def now(trainer: L.Trainer) -> list[float]:
        return [optimizer.param_groups[0]["lr"] for optimizer in trainer.optimizers]

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self.at_step.setdefault(trainer.global_step, self.now(trainer))

    def on_train_end(self, trainer: L.Trainer, *args) -> None:
        self.next = self.now(trainer)


def fit(argv: list[str], max_steps: int, root: Path, ckpt_path: Path | None = None) -> tuple[L.Trainer, Rates]:
    cfg = compose([*argv, f"trainer.max_steps={max_steps}"])
    rates = Rates()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[rates], default_root_dir=root,
    )  # fmt: skip
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data), ckpt_path=ckpt_path)
    return trainer, rates


def train_it_longer(
    argv: list[str], root: Path, steps: int, more: int, longer: tuple[str, ...] = ()
) -> tuple[Rates, Rates]:
    """Rates of a run of `steps` steps, and of its resume to `more` steps (with the overrides `longer`)."""
    trainer, first = fit(argv, steps, root)
    trainer.save_checkpoint(root / "stopped.ckpt")
    _, resumed = fit([*argv, *longer], more, root, ckpt_path=root / "stopped.ckpt")
    return first, resumed


def assert_continues(first: Rates, resumed: Rates, factor) -> None:
    """The resumed run starts at the rate the stopped run had set, and every resumed step's rate is the
    first run's schedule continued: peak * factor(step) for each optimizer."""
    assert resumed.at_step[min(resumed.at_step)] == pytest.approx(first.next, rel=1e-6), "the rate jumped on resume"
    (peak,) = (rate / factor(0) for rate in first.at_step[0])
    for step, (rate,) in (first.at_step | resumed.at_step).items():
        assert rate == pytest.approx(peak * factor(step), rel=1e-5), f"step {step}: the schedule changed on resume"


def test_gpt_cosine_keeps_its_horizon_when_trained_longer(tmp_path: Path) -> None:
    first, resumed = train_it_longer([*GPT, *GPT_DATA], tmp_path, steps=12, more=24)
    # the horizon is the first run's 12 steps, kept on resume (the new length would give 24)
    assert_continues(first, resumed, lambda step: warmup_cosine(step, warmup_steps=2, decay_steps=12, min_ratio=0.1))


def test_gpt_refuses_a_schedule_key_changed_on_resume(tmp_path: Path) -> None:
    argv = [*GPT, *GPT_DATA, "model.lr_decay_steps=10"]
    trainer, _ = fit(argv, 4, tmp_path)
    trainer.save_checkpoint(tmp_path / "stopped.ckpt")
    with pytest.raises(ConfigError, match=r"model.lr_decay_steps=20, .* resume with model.lr_decay_steps=10"):
        fit([*argv, "model.lr_decay_steps=20"], 8, tmp_path, ckpt_path=tmp_path / "stopped.ckpt")
    with pytest.raises(ConfigError, match=r"resume with model.warmup_steps=2"):
        fit([*argv, "model.warmup_steps=5"], 8, tmp_path, ckpt_path=tmp_path / "stopped.ckpt")
    fit(argv, 8, tmp_path, ckpt_path=tmp_path / "stopped.ckpt")  # the same keys: resumes


def test_gan_scheduler_keeps_its_horizon_when_trained_longer(tmp_path: Path) -> None:
    argv = [*GAN, gan_schedule(4), "data.batch_size=16"]
    first, resumed = train_it_longer(argv, tmp_path, steps=8, more=16, longer=(gan_schedule(8),))
    # each batch is a D and a G step (two global steps); the schedulers count G steps: 4, then kept at the end
    peaks = first.at_step[0]  # (D's, G's)
    for step, rates in (first.at_step | resumed.at_step).items():
        factor = 1 - 0.9 * min(step // 2, 4) / 4
        assert rates == pytest.approx([peak * factor for peak in peaks]), f"step {step}: the schedule changed"
    assert resumed.at_step[min(resumed.at_step)] == pytest.approx(first.next)


def test_flow_warmup_is_continuous_when_trained_longer(tmp_path: Path) -> None:
    first, resumed = train_it_longer([*FLOW, "data.batch_size=16"], tmp_path, steps=3, more=8)
    assert_continues(first, resumed, lambda step: min(1.0, (step + 1) / 6))  # stopped mid-warm-up


def test_gpt_feedback_warmup_is_continuous_when_trained_longer(tiny_gpt_run: Path, tmp_path: Path) -> None:
    argv = [
        "model=gpt_feedback", f"model.init_from={tiny_gpt_run}", *tiny_gpt_data_args(tiny_gpt_run),
        "model.prompt_length=4", "model.completion_length=4", "model.group_size=2", "model.prompts_per_step=2",
        "model.val_prompts=2", "model.warmup_steps=5",
        "model.reward={_target_: genlab.rewards.substring_count, _partial_: true, text: e}",
    ]  # fmt: skip
    first, resumed = train_it_longer(argv, tmp_path, steps=2, more=4)
    assert_continues(first, resumed, lambda step: min(1.0, (step + 1) / 6))
