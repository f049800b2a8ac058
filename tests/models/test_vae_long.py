"""experiment=vae_long (configs/experiment/vae_long.yaml): the VAE recipe for budgets past a minute,
measured in docs/vae.md, "VAE vs pytorch/examples"."""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.run import load_model
from genlab.train import train

TINY = ("model.encoder.hidden_features=[16]", "model.latent_dim=4", "callbacks.samples.every_n_epochs=1000")


def test_vae_long_has_no_epoch_limit_and_ends_on_the_ema_weights(make_config, log_dir: Path) -> None:
    cfg = make_config("experiment=vae_long", *TINY, "trainer.limit_train_batches=2", "trainer.max_steps=40")
    assert cfg.trainer.max_epochs == -1 and cfg.trainer.max_time  # the time budget ends it, not the epochs
    train(cfg)
    (run,) = (log_dir / "vae").iterdir()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 40  # 20 epochs of 2 steps: past any per-epoch checkpoint gap
    average, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert average.keys() == current.keys()
    assert any(not torch.equal(average[k], current[k]) for k in average)  # the average, not the last step
    model = load_model(run / "checkpoints" / "last.ckpt")  # what make sample / make eval load
    assert all(torch.equal(v, average[k]) for k, v in model.state_dict().items())
    samples = model.sample(8)
    assert samples.shape == (8, 1, 8, 8) and samples.abs().max() <= 1
