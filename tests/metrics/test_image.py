from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import pytest
import torch
from conftest import PoolFeatures
from torchmetrics.image import FrechetInceptionDistance

from genlab.errors import DataError
from genlab.metrics import ClassifierFeatures, has_classifier_head, image_metrics, memorisation, nearest_distance
from genlab.metrics.image import reference_features


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


def test_labels_with_features_without_a_classifier_head_skip_accuracy_with_a_note(digits, caplog) -> None:
    images, labels = digits["test"]
    features = PoolFeatures()
    assert not has_classifier_head(features)
    with caplog.at_level(logging.WARNING, logger="genlab.metrics.image"):
        scores = image_metrics(images, digits["train"][0], images, labels, features=features, cache_dir=None)
    for key in ("fid", "kid", "precision", "recall", "density", "coverage", "real_test/fid"):
        assert math.isfinite(scores[key]), key
    assert not any(key.startswith("accuracy") for key in scores)
    assert "per-label accuracy skipped" in caplog.text and "no classifier head" in caplog.text


def test_a_too_small_test_split_is_refused_before_any_feature_and_names_the_split(digits) -> None:
    calls = []

    class Counting(PoolFeatures):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return super().forward(x)

    with pytest.raises(DataError) as err:
        image_metrics(digits["train"][0][:200], digits["train"][0], digits["test"][0][:50], features=Counting())
    message = str(err.value)
    assert "50 test images are too few" in message and "data.test_fraction" in message
    assert "number of samples" not in message  # the advice of too few samples (n=) was the wrong one
    assert not calls


def test_nn_dist_ratio_of_fresh_data_is_about_one_beyond_the_calibration_subset() -> None:
    """Real and sampled images are measured against the same reference (the whole training set): with
    more than the 2,000 calibration images, fresh data from the same distribution still score ~1
    (0.90 at 8,000 images when the real images were measured against a 2,000-image subset)."""
    generator = torch.Generator().manual_seed(0)
    train = torch.rand(8000, 1, 4, 4, generator=generator) * 2 - 1
    fresh = torch.rand(1000, 1, 4, 4, generator=generator) * 2 - 1  # new draws, not copies
    scores = memorisation(fresh, train)
    assert 0.95 < scores["nn_dist_ratio"] < 1.05
    assert scores["near_copies"] < 0.01
    held_out = memorisation(train[:1000], train[1000:])  # real against real: the same figure
    assert 0.95 < held_out["nn_dist_ratio"] < 1.05


def test_nearest_distance_skips_each_subset_image_itself() -> None:
    reference = torch.tensor([0.0, 1.0, 3.0, 7.0]).view(4, 1, 1, 1)
    subset = torch.tensor([3, 1])
    distances = nearest_distance(reference[subset], reference, skip=subset)
    assert distances.tolist() == [4.0, 1.0]  # 7 -> 3, 1 -> 0: never 0 to itself


def test_two_writers_of_one_cache_file_both_succeed(tmp_path: Path, monkeypatch) -> None:
    """Two ranks caching the same features at once. Each writer is held after writing its temporary
    file until the other has written its own, then both rename: with one shared `.tmp` name the second
    rename found no file (FileNotFoundError)."""
    images = torch.zeros(300, 1, 8, 8)
    both_written = threading.Barrier(2, timeout=60)  # the timeout only unblocks a failed run
    real_save = torch.save

    def save_then_wait(obj, file, *args, **kwargs) -> None:
        real_save(obj, file, *args, **kwargs)
        both_written.wait()

    monkeypatch.setattr(torch, "save", save_then_wait)
    errors: list[BaseException] = []
    results: list[torch.Tensor] = []

    def writer() -> None:
        try:
            results.append(reference_features(PoolFeatures(), images, tmp_path))
        except BaseException as err:
            errors.append(err)
            both_written.abort()

    threads = [threading.Thread(target=writer) for _ in range(2)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    assert not errors, errors
    (cached,) = (tmp_path / "metrics").iterdir()  # one file, no temporary left behind
    assert cached.suffix == ".pt" and torch.equal(torch.load(cached, weights_only=True), results[0])
