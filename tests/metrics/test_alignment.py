"""The alignment checker reads real scenes right and blank or wrong ones wrong; held-out figures stay apart."""

from __future__ import annotations

import pytest
import torch
from digit_lookup import DigitLookup

from genlab.data import CaptionedDigitsDataModule
from genlab.data.captioned_digits import Composition
from genlab.errors import DataError
from genlab.metrics.alignment import CRITERIA, AlignmentChecker, SceneFeatures, alignment_checker, summarise


@pytest.fixture(scope="module")
def data() -> CaptionedDigitsDataModule:
    dm = CaptionedDigitsDataModule(train_scenes=50, val_scenes=10, test_scenes=300)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def checker() -> AlignmentChecker:
    return AlignmentChecker(DigitLookup())


def _real(data: CaptionedDigitsDataModule, kind: str, k: int = 0):
    index = [i for i, s in enumerate(data.scenes["test"]) if s.composition.kind == kind][k]
    return data.splits["test"][[index]][0], data.scenes["test"][index].composition


def test_real_scenes_score_every_criterion(data: CaptionedDigitsDataModule, checker: AlignmentChecker) -> None:
    images, _ = data.splits["test"][list(range(300))]
    comps = [s.composition for s in data.scenes["test"]]
    scores = checker.score(images, comps)
    assert all(s[c] is not False for s in scores for c in CRITERIA)
    heldout = [data.is_heldout(c) for c in comps]
    summary = summarise(comps, scores, heldout)
    assert summary["align_heldout/n"] == sum(heldout) > 0 and summary["align_seen/n"] == 300 - sum(heldout)
    assert all(v == 1.0 for k, v in summary.items() if not k.endswith("/n"))
    assert summary["align_seen_relations/position"] == 1.0  # the like-for-like row of the held-out one


def test_blank_and_noise_scenes_win_nothing(data: CaptionedDigitsDataModule, checker: AlignmentChecker) -> None:
    comps = [s.composition for s in data.scenes["test"][:40]]
    blank = torch.full((40, 1, 32, 32), -1.0)
    faint = blank + 0.45 * torch.rand(40, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # no ink
    for images in (blank, faint):
        summary = summarise(comps, checker.score(images, comps), [False] * 40)
        assert all(v == 0.0 for k, v in summary.items() if not k.endswith("/n"))


def test_wrong_scenes_fail_what_they_get_wrong(data: CaptionedDigitsDataModule, checker: AlignmentChecker) -> None:
    scene, comp = _real(data, "above")
    swapped = torch.cat([scene[..., 16:, :], scene[..., :16, :]], -2)  # the bottom digit now on top
    (score,) = checker.score(swapped, [comp])
    assert score == {"identity": True, "count": True, "position": False, "exact": False}
    other = Composition("above", tuple((d + 1) % 10 for d in comp.digits))
    assert checker.score(scene, [other])[0]["identity"] is False
    large, comp = _real(data, "large")
    (score,) = checker.score(large, [Composition("small", comp.digits)])  # a large digit is not a small one
    assert score["count"] is False and score["exact"] is False
    small, comp = _real(data, "small")
    assert checker.score(small, [Composition("large", comp.digits)])[0]["count"] is False  # nor the reverse
    (score,) = checker.score(scene, [Composition("count", (comp.digits[0],) * 3)])
    assert score["count"] is False


def test_captions_as_text_and_bad_shapes(data: CaptionedDigitsDataModule, checker: AlignmentChecker) -> None:
    scene, comp = _real(data, "left")
    caption = data.scenes["test"][[s.composition for s in data.scenes["test"]].index(comp)].caption
    assert checker.score(scene, [caption]) == checker.score(scene, [comp])
    with pytest.raises(DataError, match="32x32"):
        checker.read(torch.zeros(1, 1, 28, 28))
    features = SceneFeatures(checker)
    assert features(scene).shape == (1, features.num_features) == (1, 50)


@pytest.mark.slow
def test_the_mnist5k_classifier_reads_real_test_scenes_near_perfectly(
    data: CaptionedDigitsDataModule, tmp_path
) -> None:
    real = alignment_checker(32, seed=0, cache_dir=tmp_path)  # trains the 16px classifier (a minute or more)
    comps = [s.composition for s in data.scenes["test"]]
    summary = summarise(comps, real.score(data.splits["test"][list(range(300))][0], comps), [False] * 300)
    assert summary["align_all/exact"] > 0.9 and summary["align_all/identity"] > 0.95


def test_a_16px_canvas_is_read_the_same_way() -> None:
    dm = CaptionedDigitsDataModule(image_size=16, train_scenes=20, val_scenes=10, test_scenes=100)
    dm.setup("fit")
    comps = [s.composition for s in dm.scenes["test"]]
    checker = AlignmentChecker(DigitLookup(16), image_size=16)
    summary = summarise(comps, checker.score(dm.splits["test"][list(range(100))][0], comps), [False] * 100)
    assert summary["align_all/exact"] == 1.0 and checker.min_ink == 2
