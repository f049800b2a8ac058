"""genlab.callbacks.CPUTimeBudget on a fake clock: no test here depends on how fast the machine is."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from genlab.callbacks import CPUTimeBudget
from genlab.errors import ConfigError


class FakeClock:
    """Seconds that pass only when the model's steps say so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedModel(BoringModel):
    """A training step costs 1 fake second, a validation step 100: only the first may count."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.clock.now += 100.0
        return super().validation_step(batch, batch_idx)


def fit(budget: CPUTimeBudget, clock: FakeClock, tmp_path, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        callbacks=[budget],
        max_epochs=100,
        limit_train_batches=4,
        limit_val_batches=1,
        val_check_interval=2,  # validation inside the epochs too: its 100 s must not count
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(TimedModel(clock), ckpt_path=ckpt_path)
    return trainer


def test_training_stops_once_the_steps_have_used_the_budget(tmp_path) -> None:
    clock = FakeClock()
    budget = CPUTimeBudget(seconds=5, clock=clock)
    trainer = fit(budget, clock, tmp_path)
    assert trainer.global_step == 5  # mid-epoch (4 batches an epoch), not at max_epochs
    assert (budget.used, budget.steps) == (5.0, 5)
    assert clock.now > 100  # validation ran, and its clock time was left out


def test_the_budget_travels_with_the_checkpoint_and_a_resume_continues_it(tmp_path) -> None:
    clock = FakeClock()
    trainer = fit(CPUTimeBudget(seconds=3, clock=clock), clock, tmp_path)
    trainer.save_checkpoint(tmp_path / "stopped.ckpt")
    state = torch.load(tmp_path / "stopped.ckpt", weights_only=False)["callbacks"]["CPUTimeBudget"]
    assert (state["used"], state["steps"]) == (3.0, 3)  # what bench/compare_mnist5k.py reads back
    resumed = CPUTimeBudget(seconds=7, clock=clock)  # the configured budget, not the saved one, decides
    trainer = fit(resumed, clock, tmp_path, ckpt_path=tmp_path / "stopped.ckpt")
    assert trainer.global_step == 7 and (resumed.used, resumed.steps) == (7.0, 7)


@pytest.mark.parametrize("seconds", [0, -1.0])
def test_a_budget_that_is_not_positive_is_refused_naming_the_key(seconds) -> None:
    with pytest.raises(ConfigError, match=r"callbacks.cpu_budget.seconds must be > 0"):
        CPUTimeBudget(seconds=seconds)


def test_the_default_clock_is_this_process_cpu_time() -> None:
    assert CPUTimeBudget(seconds=1).clock is time.process_time  # not wall time: waiting for a core is free
