from __future__ import annotations

import pytest
import torch

from genlab.data import DigitsDataModule
from genlab.errors import DataError


def _setup(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32, **kwargs)
    dm.setup("fit")
    return dm


def test_batches_are_images_in_model_range_with_labels() -> None:
    dm = _setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1
    assert y.shape == (32,) and y.dtype == torch.int64 and y.min() >= 0 and y.max() <= 9


def test_split_is_fixed_by_seed_and_covers_the_data() -> None:
    a, b, c = _setup(seed=0), _setup(seed=0), _setup(seed=1)
    sizes = [len(a.splits[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 180
    assert a.splits["val"].indices == b.splits["val"].indices
    assert a.splits["val"].indices != c.splits["val"].indices


def test_shuffle_depends_on_epoch_only() -> None:
    """The order a resumed run sees is the order the unbroken run saw."""
    dm = _setup()
    first, again = dm.train_dataloader(), dm.train_dataloader()
    for loader, epoch in ((first, 3), (again, 3)):
        loader.sampler.set_epoch(epoch)
    assert torch.equal(next(iter(first))[1], next(iter(again))[1])
    again.sampler.set_epoch(4)
    assert not torch.equal(next(iter(first))[0], next(iter(again))[0])
    assert len(first) == 1437 // 32  # drop_last on train: every step sees a full batch


def test_resize_and_rgb() -> None:
    x, _ = next(iter(_setup(image_size=16, channels=3).val_dataloader()))
    assert x.shape == (32, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 2])


def test_declared_levels_must_match_the_values() -> None:
    assert _setup().levels == 17
    x, _ = next(iter(_setup(image_size=16).train_dataloader()))
    k = (x + 1) / 2 * 16
    assert torch.equal(k, k.round())  # resized, then rounded back onto the 17 levels
    for wrong, hint in ((256, "not on the grid"), (33, "data.levels=17")):
        with pytest.raises(DataError, match=f"data.levels={wrong} does not match the data") as err:
            _setup(levels=wrong)
        assert hint in str(err.value) and "\n" not in str(err.value)


def test_exclude_labels_leaves_a_class_out_of_train_and_val_only() -> None:
    """make anomaly's held-out class: gone from train and val, all of it still in test, the other
    images where the plain split put them."""
    plain, held = _setup(seed=0), _setup(seed=0, exclude_labels=[7])
    for split in ("train", "val"):
        labels = held.splits[split].dataset.labels[held.splits[split].indices]
        assert 7 not in labels.tolist() and len(labels) > 0
        kept = [i for i in plain.splits[split].indices if plain.splits[split].dataset.labels[i] != 7]
        assert held.splits[split].indices == kept
    assert held.splits["test"].indices == plain.splits["test"].indices
    excluded = held.splits["excluded"]
    assert len(excluded) > 100 and set(excluded.dataset.labels[excluded.indices].tolist()) == {7}
    train_labels = torch.cat([y for _, y in held.train_dataloader()])
    assert 7 not in train_labels.tolist()


@pytest.mark.parametrize("bad", [[10], [-1], list(range(10))])
def test_exclude_labels_outside_the_classes_is_one_config_error(bad: list[int]) -> None:
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match="data.exclude_labels"):
        DigitsDataModule(exclude_labels=bad)
