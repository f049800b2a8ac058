"""`image_metrics`: every image-quality figure of a set of samples, in one feature space."""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image import FrechetInceptionDistance, KernelInceptionDistance

from genlab.errors import DataError
from genlab.metrics.features import save_atomically
from genlab.metrics.prdc import prdc

log = logging.getLogger(__name__)

MIN_SAMPLES = 100  # below this FID/KID/PRDC are mostly noise (and FID is biased in N: compare at equal N)
NEAR_COPY_FACTOR = 0.5  # near-copy: nearer a training image than half what real images are (see memorisation)
# torchmetrics' default is 100 subsets (Binkowski et al. 2018): 45 s on one CPU thread for 1k-image
# sets, whose 1k-subsets overlap so much that 10 give the same mean (and a usable std) in a tenth.
KID_SUBSETS = 10
BATCH = 500  # images through the feature net at once: a fixed batch (Inception's features depend on it)


class _Given(nn.Module):
    """The identity, for torchmetrics: the features are computed once and shared by every metric."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@torch.no_grad()
def extract(features: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`features(images)` in fixed batches, in fp32 outside autocast, `(N, num_features)` on the CPU."""
    device = next(features.parameters()).device
    with torch.autocast(device.type, enabled=False):
        return torch.cat([features(x.to(device).float()).float().cpu() for x in images.split(BATCH)])


def reference_features(
    features: nn.Module, images: torch.Tensor, cache_dir: str | Path | None = "data"
) -> torch.Tensor:
    """`extract(features, images)`, cached under `cache_dir/metrics/` for these exact images and
    feature net (the real statistics of a data set are computed once)."""
    if cache_dir is None or not hasattr(features, "key"):
        return extract(features, images)
    sha = hashlib.sha1(f"{features.key}{tuple(images.shape)}".encode())
    sha.update(images.detach().cpu().float().contiguous().numpy().tobytes())
    path = Path(cache_dir) / "metrics" / f"features-{sha.hexdigest()[:16]}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    feats = extract(features, images)
    save_atomically(feats, path)
    return feats


def fid_kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, kid_subsets: int = KID_SUBSETS) -> dict[str, float]:
    """FID and KID (mean and std over `kid_subsets` subsets of min(1000, N)) of two feature sets,
    through torchmetrics. FID in float64 (FIELD_NOTES §5.4), KID in float32."""
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    subset_size = min(1000, len(real), len(fake))  # torchmetrics' 1000 raises when N is smaller
    with warnings.catch_warnings():  # "KID keeps every feature in memory": these are already in memory
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=kid_subsets, subset_size=subset_size)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    kid.update(real.float(), real=True)
    kid.update(fake.float(), real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global RNG
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item()}


def nearest_distance(
    x: torch.Tensor, reference: torch.Tensor, exclude_self: bool = False, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """RMS pixel distance from each image of `x` to its nearest image in `reference`, `(N,)`.
    `exclude_self`: `x` is `reference`, skip each image's distance to itself; `skip` `(N,)`: the
    index in `reference` of each image of `x` (a subset of it), skipped the same way."""
    x, reference = x.flatten(1).float(), reference.flatten(1).float()
    if exclude_self:
        skip = torch.arange(len(x))
    out = []
    for start, rows in zip(range(0, len(x), 1024), x.split(1024), strict=True):
        d = torch.cdist(rows, reference)
        if skip is not None:  # an image's distance to itself is not a neighbour
            d[torch.arange(len(rows)), skip[start : start + len(rows)]] = math.inf
        out.append(d.min(1).values)
    return torch.cat(out) / math.sqrt(x.shape[1])


def memorisation(samples: torch.Tensor, real_train: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """How close samples come to training images, in pixels (RMS distance in [-1, 1] units).

    A model that replays its training set scores a perfect FID; this is the check beside it.
    `nn_dist` is the median distance from a sample to its nearest training image; `nn_dist_ratio`
    divides it by the same median for real training images to their nearest OTHER training image
    (about 1: samples are as new as real data; far below 1: they hug training images). `near_copies`
    is the fraction of samples nearer a training image than NEAR_COPY_FACTOR (1/2) times the 1st
    percentile of those real distances: on the 8x8 digits that is 0.075 (about half a grey level of
    the 17), and no training digit is that close to another one, so fresh data score ~0 and a
    copying model 1.
    """
    # The real images' distances: a seeded subset of 2,000 of them (O(2000 x N)) to their nearest OTHER
    # image of the WHOLE training set, the reference the samples are measured against too. (To a
    # 2,000-image subset instead, real images found farther neighbours than samples did in the whole
    # set: the ratio was 0.83 for fresh data at 20,000 images.)
    query = torch.arange(len(real_train))
    if len(real_train) > 2000:
        query = torch.randperm(len(real_train), generator=torch.Generator().manual_seed(seed))[:2000]
    real_nn = nearest_distance(real_train[query], real_train, skip=query)
    threshold = NEAR_COPY_FACTOR * torch.quantile(real_nn, 0.01).item()
    sample_nn = nearest_distance(samples, real_train)
    return {
        "nn_dist": sample_nn.median().item(),
        "nn_dist_ratio": (sample_nn.median() / real_nn.median()).item(),
        "near_copies": (sample_nn < threshold).float().mean().item(),
        "near_copy_threshold": threshold,
    }


SAMPLES_ADVICE = "raise the number of samples (n=, N=, callbacks.sample_metrics.num_samples)"
TEST_ADVICE = "the held-out figures (real_test/...) need a larger test split: train with a larger data.test_fraction"


def check_count(n: int, what: str, min_samples: int = MIN_SAMPLES, advice: str = SAMPLES_ADVICE) -> None:
    if n < min_samples:
        raise DataError(
            f"{n} {what} are too few for FID/KID/PRDC (at least {min_samples}; FID is biased in N, so compare "
            f"figures at one fixed N): {advice}"
        )


def has_classifier_head(features: nn.Module) -> bool:
    """Whether `features` can read a label (per-label accuracy): the classifier features can,
    Inception's pool features cannot."""
    return callable(getattr(features, "logits", None))


NO_CLASSIFIER_HEAD = (
    "per-label accuracy skipped: the feature network (Inception pool features) has no classifier head "
    "(FID/KID/PRDC are unaffected); leave feature_extractor_weights_path unset for the data's classifier "
    "features, which have one"
)


def image_metrics(
    samples: torch.Tensor,
    real_train: torch.Tensor,
    real_test: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    features: nn.Module | None = None,
    seed: int = 0,
    nearest_k: int = 5,
    min_samples: int = MIN_SAMPLES,
    cache_dir: str | Path | None = "data",
) -> dict[str, float]:
    """Every image figure of `samples` `(N, C, H, W)` in [-1, 1] against the training images.

    FID, KID (`kid`, `kid_std`), precision/recall/density/coverage in `features`' space (default:
    `digits_features` at the samples' size), memorisation in pixels (see `memorisation`). With
    `real_test`, the same figures for the held-out images as `real_test/...`: the floor a model
    generalising perfectly would reach at that N. With `labels` (the class each sample was generated
    for), `accuracy` and `accuracy/<label>`: how often the feature classifier agrees (skipped, with a
    logged note, when `features` has no classifier head: Inception). Also `n` and `seed`. Refuses
    fewer than `min_samples` samples or test images.
    """
    if samples.dim() != 4 or samples.shape[1:] != real_train.shape[1:]:
        shape, expected = tuple(samples.shape), tuple(real_train.shape[1:])
        raise DataError(f"samples of shape {shape} do not match the data's images {expected}")
    check_count(len(samples), "samples", min_samples)
    if real_test is not None:  # before any feature is extracted
        check_count(len(real_test), "test images", min_samples, TEST_ADVICE)
    if features is None:
        from genlab.metrics.features import digits_features

        features = digits_features(samples.shape[-1], samples.shape[1], cache_dir=cache_dir or "data")
    train_feats = reference_features(features, real_train, cache_dir)
    sample_feats = extract(features, samples)
    out = {"n": float(len(samples)), "seed": float(seed)}
    out |= fid_kid(train_feats, sample_feats, seed) | prdc(train_feats, sample_feats, nearest_k)
    out |= memorisation(samples, real_train, seed)
    if real_test is not None:
        test_feats = reference_features(features, real_test, cache_dir)
        baseline = fid_kid(train_feats, test_feats, seed) | prdc(train_feats, test_feats, nearest_k)
        baseline |= memorisation(real_test, real_train, seed)
        out |= {f"real_test/{k}": v for k, v in baseline.items()} | {"real_test/n": float(len(real_test))}
    if labels is not None and has_classifier_head(features):
        out |= label_accuracy(features, samples, labels)
    elif labels is not None:
        log.warning(NO_CLASSIFIER_HEAD)  # FID/KID/PRDC above hold without it
    return out


@torch.no_grad()
def label_accuracy(features: nn.Module, samples: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How often the feature classifier reads each sample as the label it was generated for."""
    if not has_classifier_head(features):
        raise DataError(NO_CLASSIFIER_HEAD.replace("skipped", "needs a classifier"))
    device = next(features.parameters()).device
    predicted = torch.cat([features.logits(x.to(device)).argmax(1).cpu() for x in samples.split(BATCH)])
    labels = labels.cpu().long()
    correct = (predicted == labels).float()
    out = {"accuracy": correct.mean().item()}
    for label in labels.unique().tolist():
        out[f"accuracy/{label}"] = correct[labels == label].mean().item()
    return out
