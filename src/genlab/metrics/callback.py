"""`SampleMetrics`: FID, KID, PRDC and memorisation of fresh samples during training, as `val/...`."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from genlab.errors import ConfigError
from genlab.metrics.features import make_features, split_tensors
from genlab.metrics.image import MIN_SAMPLES, NO_CLASSIFIER_HEAD, check_count, has_classifier_head, image_metrics
from genlab.sampling import class_labels, draw, is_conditional

LOGGED = ("fid", "kid", "precision", "recall", "density", "coverage", "near_copies", "nn_dist_ratio", "accuracy")


class SampleMetrics(L.Callback):
    """Every `every_n_epochs` validation epochs, draws `num_samples` with a fixed seed and logs
    `val/fid`, `val/kid`, `val/precision`, `val/recall`, `val/density`, `val/coverage`,
    `val/near_copies`, `val/nn_dist_ratio` (and `val/accuracy` for conditional models scored with the
    classifier features: Inception's have no classifier head, so no accuracy then), so a sweep
    or a checkpoint can monitor `val/fid`. `every_n_epochs` null: off (the default: it costs a
    sampling pass). The feature net and the real features are made once, at the first evaluation.

    Every rank draws the same seeded samples and logs the same figures (a sharded model needs every
    rank to sample); N is fixed, so figures compare across epochs (FID is biased in N).
    """

    def __init__(
        self,
        every_n_epochs: int | None = None,
        num_samples: int = 1000,
        seed: int = 0,
        feature_extractor_weights_path: str | None = None,
        cache_dir: str = "data",
    ) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ConfigError(
                f"callbacks.sample_metrics.every_n_epochs must be >= 1 or null (off), got {every_n_epochs}"
            )
        check_count(num_samples, "samples (callbacks.sample_metrics.num_samples)", MIN_SAMPLES)
        self.every_n_epochs, self.num_samples, self.seed = every_n_epochs, num_samples, seed
        self.weights_path, self.cache_dir = feature_extractor_weights_path, cache_dir
        self._features: torch.nn.Module | None = None
        self._real: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.every_n_epochs is None:
            return
        from genlab.data.images import ImageDataModule

        if not hasattr(pl_module, "sample") or not isinstance(trainer.datamodule, ImageDataModule):
            raise ConfigError(
                "callbacks.sample_metrics: FID needs an image family and image data; set "
                "callbacks.sample_metrics.every_n_epochs=null for this model"
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs is None or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        datamodule = trainer.datamodule
        if self._features is None:
            self._features = make_features(datamodule, self.weights_path, self.cache_dir)
            self._real = split_tensors(datamodule, "train")[0]
            if is_conditional(pl_module) and not has_classifier_head(self._features):
                rank_zero_warn(f"callbacks.sample_metrics: {NO_CLASSIFIER_HEAD} (no val/accuracy)")
        self._features.to(pl_module.device)
        labels = None
        if is_conditional(pl_module):
            labels = class_labels(self.num_samples, int(datamodule.num_classes), None)
        samples = draw(pl_module, self.num_samples, self.seed, labels)
        if not isinstance(samples, torch.Tensor):
            raise ConfigError("callbacks.sample_metrics: this family samples text, not images; set every_n_epochs=null")
        scored_labels = labels if has_classifier_head(self._features) else None  # said once, above
        scores: dict[str, Any] = image_metrics(
            samples, self._real, labels=scored_labels, features=self._features, seed=self.seed, cache_dir=self.cache_dir
        )
        logged = {f"val/{k}": float(scores[k]) for k in LOGGED if k in scores}
        pl_module.log_dict(logged, sync_dist=True)  # equal on every rank: a no-op mean
