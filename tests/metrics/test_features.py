from __future__ import annotations

from pathlib import Path

import pytest
import torch

import genlab.metrics.features
from genlab.data import DigitsDataModule, ImageFolderDataModule
from genlab.errors import ConfigError, DataError
from genlab.metrics import ClassifierFeatures, InceptionFeatures, classifier_features, digits_features


def test_classifier_is_accurate_on_the_test_split(features: ClassifierFeatures, digits) -> None:
    assert features.test_accuracy > 0.95  # measured 98.3% with the default split
    images, labels = digits["test"]
    assert (features.logits(images).argmax(1) == labels).float().mean() > 0.95
    assert features(images).shape == (len(images), features.num_features)


def test_classifier_is_cached_and_keyed_by_the_split(
    features: ClassifierFeatures, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def trained_again(*args, **kwargs) -> None:
        raise AssertionError("the cached classifier was trained again")

    monkeypatch.setattr(genlab.metrics.features, "train_classifier", trained_again)  # loaded, not trained again
    again = digits_features(cache_dir=cache_dir)
    assert again.key == features.key
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(again(x), features(x))
    files = sorted(cache_dir.glob("digits_classifier-8px-*.pt"))
    assert len(files) == 1 and features.key.removeprefix("classifier-") in files[0].name
    # another seed splits the digits differently: another key, so another classifier would be trained
    other = DigitsDataModule(seed=1)
    assert other is not None and features.key != "classifier-" + _key_of(other)


def _key_of(datamodule) -> str:
    from genlab.metrics.features import CLASSIFIER_RECIPE, CLASSIFIER_VERSION, _digest, split_tensors

    images, labels = split_tensors(datamodule, "train")
    recipe = {**CLASSIFIER_RECIPE, "version": CLASSIFIER_VERSION, "num_classes": 10}
    return _digest(images, labels, extra=repr(sorted(recipe.items())))


def test_features_refuse_another_image_size(features: ClassifierFeatures) -> None:
    with pytest.raises(DataError, match="trained on 8x8 images"):
        features(torch.zeros(2, 1, 16, 16))


def test_three_channel_digits_use_the_grey_classifier(features: ClassifierFeatures, digits) -> None:
    images = digits["test"][0][:8]
    torch.testing.assert_close(features(images.expand(-1, 3, -1, -1)), features(images))


def test_unlabelled_data_has_no_classifier(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(4):
        Image.new("L", (8, 8), i * 40).save(tmp_path / f"{i}.png")
    with pytest.raises(ConfigError, match="feature_extractor_weights_path"):
        classifier_features(ImageFolderDataModule(path=str(tmp_path), channels=1, image_size=8), tmp_path)


def test_inception_weights_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        InceptionFeatures(tmp_path / "inception.pth")
    assert "feature_extractor_weights_path" in str(err.value) and "\n" not in str(err.value)


def test_inception_weights_that_would_run_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weights": print}, path)  # a pickled callable: weights_only refuses it
    with pytest.raises(ConfigError, match="not a weights file"):
        InceptionFeatures(path)


@pytest.mark.slow
def test_resized_digits_get_their_own_classifier(tmp_path: Path) -> None:
    features = digits_features(image_size=32, cache_dir=tmp_path)
    assert features.test_accuracy > 0.95 and features.image_size == 32
    assert features(torch.zeros(2, 1, 32, 32)).shape == (2, 64)
