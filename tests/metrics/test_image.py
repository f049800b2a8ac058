from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchmetrics.image import FrechetInceptionDistance

from genlab.errors import DataError
from genlab.metrics import ClassifierFeatures, image_metrics


def test_fid_small_for_the_test_split_and_large_for_noise(features: ClassifierFeatures, digits, cache_dir) -> None:
    train, test = digits["train"][0], digits["test"][0]
    real = image_metrics(test, train, features=features, cache_dir=cache_dir)
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fake = image_metrics(noise, train, features=features, cache_dir=cache_dir)
    assert real["fid"] < 1.0 and fake["fid"] > 10.0  # measured 0.30 and 20.2 (180 images)
    assert real["kid"] < 0.05 < 0.5 < fake["kid"]
    assert real["precision"] > 0.9 > 0.3 > fake["precision"]
    assert real["n"] == len(test)


def test_fid_of_a_set_with_itself_is_zero(features: ClassifierFeatures, digits, cache_dir) -> None:
    train = digits["train"][0]
    assert image_metrics(train, train, features=features, cache_dir=cache_dir)["fid"] == pytest.approx(0, abs=1e-3)


def test_feature_net_plugs_into_torchmetrics(features: ClassifierFeatures, digits) -> None:
    fid = FrechetInceptionDistance(feature=features)  # num_features read, no dummy 299x299 image
    fid.update(digits["train"][0], real=True)
    fid.update(digits["test"][0], real=False)
    ours = image_metrics(digits["test"][0], digits["train"][0], features=features, cache_dir=None)["fid"]
    assert fid.compute().item() == pytest.approx(ours, rel=1e-3)


def test_copies_of_the_training_set_are_caught(features: ClassifierFeatures, digits, cache_dir) -> None:
    train, test = digits["train"][0], digits["test"][0]
    copies = image_metrics(train[:200], train, test, features=features, cache_dir=cache_dir)
    assert copies["near_copies"] == 1.0 and copies["nn_dist"] == 0.0
    assert copies["real_test/near_copies"] == 0.0  # fresh digits are never that close to a training one
    assert 0.8 < copies["real_test/nn_dist_ratio"] < 1.25


def test_per_label_accuracy(features: ClassifierFeatures, digits, cache_dir) -> None:
    images, labels = digits["test"]
    right = image_metrics(images, digits["train"][0], labels=labels, features=features, cache_dir=cache_dir)
    wrong = image_metrics(images, digits["train"][0], labels=(labels + 1) % 10, features=features, cache_dir=cache_dir)
    assert right["accuracy"] > 0.95 and wrong["accuracy"] < 0.1
    assert {f"accuracy/{k}" for k in range(10)} <= right.keys()


def test_too_few_samples_are_refused(features: ClassifierFeatures, digits) -> None:
    with pytest.raises(DataError, match="10 samples are too few") as err:
        image_metrics(digits["test"][0][:10], digits["train"][0], features=features, cache_dir=None)
    assert "\n" not in str(err.value)


def test_samples_of_another_shape_are_refused(features: ClassifierFeatures, digits) -> None:
    with pytest.raises(DataError, match="do not match"):
        image_metrics(torch.zeros(200, 1, 16, 16), digits["train"][0], features=features, cache_dir=None)


def test_real_features_are_cached(features: ClassifierFeatures, digits, cache_dir: Path) -> None:
    image_metrics(digits["test"][0], digits["train"][0], features=features, cache_dir=cache_dir)
    assert list((cache_dir / "metrics").glob("features-*.pt"))
