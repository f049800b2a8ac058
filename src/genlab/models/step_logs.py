"""Training-step metrics logged only on the steps the loggers write.

Lightning's `self.log` costs about 1 ms of Python per call on a CPU (each call walks its result store to
move it to the device), which is a third of a step of the digits VAE (`bench/vae_step_time.py --clock
cpu`: 3.5 ms of math). The loggers keep one value every `trainer.log_every_n_steps` steps anyway, and the
progress bar redraws every `refresh_rate` steps, so logging the other steps' values only costs time: they
are computed and dropped. Validation metrics, which are averaged over the epoch, are logged as usual.
"""

from __future__ import annotations

from typing import Any

import lightning as L


def logs_this_step(module: L.LightningModule) -> bool:
    """Whether the loggers write this training step's metrics (Lightning's own rule; True outside a Trainer)."""
    trainer = module._trainer
    if trainer is None:
        return True
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def log_train_step(module: L.LightningModule, metrics: dict[str, Any], prog_bar: bool = True, **kwargs: Any) -> None:
    """`module.log_dict(metrics, prog_bar=...)` on the steps that reach the loggers, nothing on the others."""
    if logs_this_step(module):
        module.log_dict(metrics, prog_bar=prog_bar, **kwargs)
