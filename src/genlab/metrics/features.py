"""Feature networks for the image metrics, both usable as torchmetrics' `feature=` module.

- `ClassifierFeatures`: a small `ConvClassifier` trained once on a labelled data set's TRAINING split
  (the digits by default), cached under `data/`; its penultimate layer (64 features) is the space.
  The cache file's name holds a hash of the training images, labels and the net's settings, so a
  changed split, seed, image size or architecture trains a new one. It is trained at the data's
  `image_size`, so digits resized by config get a classifier of their own.
- `InceptionFeatures`: the standard 2048-d pool features of torch-fidelity's Inception-v3 (the
  FID of the papers), from a local weights file only: nothing is ever downloaded.

Both take images `(B, C, H, W)` in [-1, 1] (the family contract) and do their own conversion
(FIELD_NOTES §5.1: with a custom module torchmetrics passes float images through unchanged).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError, DataError
from genlab.nets.classifier import ConvClassifier

log = logging.getLogger(__name__)

# Bump when the classifier's net or recipe changes: old cache files are then left alone, not loaded.
CLASSIFIER_VERSION = 2
CLASSIFIER_RECIPE = {"hidden_channels": (32, 64), "num_features": 64, "epochs": 30, "batch_size": 64, "lr": 3e-3}


def split_tensors(datamodule: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of an `ImageDataModule` as two tensors: images `(N, C, H, W)` in [-1, 1], labels `(N,)`."""
    datamodule.setup("fit")
    dataset = datamodule.splits[split]
    if len(dataset) == 0:
        raise DataError(f"the {split} split is empty: raise data.{split}_fraction")
    images, labels = dataset[list(range(len(dataset)))]  # image datasets index with a list: one gather
    return images.float(), labels.long()


def save_atomically(obj: Any, path: Path) -> None:
    """`torch.save(obj, path)` through a temporary file of this writer's own beside `path`, then an
    atomic rename: ranks of a DDP run (every rank scores) and parallel runs write the same cache file
    at once, and a shared `.tmp` name let one writer's rename take the file from under another's.
    The contents are the same, so the last rename wins harmlessly; a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per writer (host, process, thread), as the text cache's `private_temp_path`
    temp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        torch.save(obj, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _digest(*tensors: torch.Tensor, extra: str = "") -> str:
    sha = hashlib.sha1(extra.encode())
    for t in tensors:
        sha.update(str(tuple(t.shape)).encode())
        sha.update(t.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


class ClassifierFeatures(nn.Module):
    """The penultimate features `(B, 64)` of a trained `ConvClassifier`; `logits(x)` for label accuracy."""

    def __init__(
        self, classifier: ConvClassifier, image_size: int, channels: int, key: str, test_accuracy: float, scale: float
    ) -> None:
        super().__init__()
        # Features are divided by their RMS over the training images: entries of order 1, as Inception's,
        # which KID's cubic kernel (x.y / d + 1)^3 assumes (raw ones gave KIDs in the hundreds).
        self.scale = scale
        self.classifier = classifier.eval().requires_grad_(False)
        self.image_size, self.channels, self.key, self.test_accuracy = image_size, channels, key, test_accuracy
        self.num_features = classifier.num_features  # read by torchmetrics instead of running a dummy image
        self.num_classes = classifier.head[-1].out_features

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.image_size, self.image_size):
            raise DataError(
                f"the feature classifier was trained on {self.image_size}x{self.image_size} images, got shape "
                f"{tuple(x.shape)}: score images of the size the model was trained on"
            )
        x = x.float()
        if x.shape[1] != self.channels:  # the data's 3 channels repeat the grey one (data.channels=3), or back
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        return x

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # never leaves eval mode (dropout), like torchmetrics' Inception

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(self._prepare(x)) / self.scale

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._prepare(x))


def classifier_features(datamodule: Any, cache_dir: str | Path = "data") -> ClassifierFeatures:
    """The feature classifier of `datamodule`'s training split: loaded from `cache_dir` if trained
    before on exactly these images, else trained now (seconds for the digits on one thread) and saved.
    Needs labels: a data set with at least 2 classes."""
    if int(getattr(datamodule, "num_classes", 0) or 0) < 2:
        raise ConfigError(
            "the classifier features need labelled data (data.num_classes >= 2, e.g. data=digits); for other "
            "images give metrics.feature_extractor_weights_path=<Inception weights .pth>"
        )
    images, labels = split_tensors(datamodule, "train")
    test_images, test_labels = split_tensors(datamodule, "test")
    num_classes, channels, image_size = int(datamodule.num_classes), images.shape[1], images.shape[-1]
    recipe = {**CLASSIFIER_RECIPE, "version": CLASSIFIER_VERSION, "num_classes": num_classes}
    key = _digest(images, labels, extra=repr(sorted(recipe.items())))
    name = f"{type(datamodule).__name__.removesuffix('DataModule').lower()}_classifier-{image_size}px-{key}.pt"
    path = Path(cache_dir) / name
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG (a training run's) is left as it was
        torch.manual_seed(0)
        net = ConvClassifier(channels, num_classes, image_size, recipe["hidden_channels"], recipe["num_features"])
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["state_dict"])
        accuracy, scale = float(saved["test_accuracy"]), float(saved["scale"])
    else:
        log.info("Training the feature classifier on %d training images (%dx%d), once", len(images), *images.shape[-2:])
        train_classifier(net, images, labels)
        accuracy = classifier_accuracy(net, test_images, test_labels)
        with torch.no_grad():
            scale = net.features(images).square().mean().sqrt().item()
        saved = {"state_dict": net.state_dict(), "test_accuracy": accuracy, "scale": scale, "recipe": recipe}
        save_atomically(saved, path)
    log.info("Feature classifier %s: test accuracy %.2f%% (%d test images)", path, 100 * accuracy, len(test_images))
    return ClassifierFeatures(net, image_size, channels, f"classifier-{key}", accuracy, scale)


def digits_features(image_size: int = 8, channels: int = 1, seed: int = 0, cache_dir: str | Path = "data", **kwargs):
    """`classifier_features` of `DigitsDataModule(image_size, channels, seed=seed, **kwargs)` (the split
    of `data=digits`, whose seed is the run's `seed`)."""
    from genlab.data.digits import DigitsDataModule  # data is imported lazily: metrics stay importable alone

    datamodule = DigitsDataModule(image_size=image_size, channels=channels, seed=seed, **kwargs)
    return classifier_features(datamodule, cache_dir)


def train_classifier(
    net: ConvClassifier, images: torch.Tensor, labels: torch.Tensor, steps: int | None = None, seed: int = 0
) -> None:
    """Adam with a cosine-decayed rate and random 1-pixel shifts (digits are small: it overfits
    without them), seeded: the same data and `seed` give the same classifier. `steps`: optimizer
    steps (default: the recipe's epochs over `images`); genlab.apps gives a fixed number so runs on
    100 or 1,100 images train equally long."""
    recipe = CLASSIFIER_RECIPE
    generator = torch.Generator().manual_seed(seed)
    # Called from a validation hook (SampleMetrics) it would run under Lightning's inference mode:
    # leave it, and copy the images out of it, so autograd works.
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        images, labels = images.clone(), labels.clone()
        torch.manual_seed(seed)  # dropout draws; the caller's RNG is left as it was
        optimizer = torch.optim.Adam(net.parameters(), lr=recipe["lr"])
        steps = steps or recipe["epochs"] * -(-len(images) // recipe["batch_size"])
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        pad = max(1, images.shape[-1] // 8)  # one pixel at 8x8, scaled with the size
        net.train()
        done = 0
        while done < steps:  # epochs: a fresh permutation each
            for index in torch.randperm(len(images), generator=generator).split(recipe["batch_size"]):
                x = F.pad(images[index], (pad,) * 4, value=-1.0)  # background is -1
                dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
                x = x[..., dy : dy + images.shape[-2], dx : dx + images.shape[-1]]
                loss = F.cross_entropy(net(x), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                done += 1
                if done == steps:
                    break
    net.eval()


@torch.no_grad()
def classifier_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    return (net(images).argmax(1) == labels).float().mean().item()


class InceptionFeatures(nn.Module):
    """torch-fidelity's Inception-v3 pool features `(B, 2048)` from a local weights file.

    The weights (pt_inception-2015-12-05-6726825d.pth) are what torchmetrics would download; fetch
    them once on a machine with network and give their path. The file is opened with
    `weights_only=True` first, so a file that would run code is refused before torch-fidelity
    loads it."""

    num_features = 2048

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise ConfigError(
                f"metrics.feature_extractor_weights_path: no file at '{path}' (get "
                "weights-inception-2015-12-05-6726825d.pth from torch-fidelity's v0.2.0 release and copy it there)"
            )
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConfigError(
                f"metrics.feature_extractor_weights_path: '{path}' is not a weights file ({err})"
            ) from None
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        self.key = f"inception-{path.stat().st_size}-{path.name}"
        self.image_size = None  # any size: Inception resizes to 299 itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # what torch-fidelity expects
        return self.inception(pixels).float()


def make_features(
    datamodule: Any, feature_extractor_weights_path: str | None = None, cache_dir: str | Path = "data"
) -> nn.Module:
    """Inception features when a weights file is given, else the data's own classifier features."""
    if feature_extractor_weights_path:
        return InceptionFeatures(feature_extractor_weights_path)
    return classifier_features(datamodule, cache_dir)
