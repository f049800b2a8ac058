"""Prompt alignment of generated captioned-digit scenes: does the picture say what the caption says?

GenEval's idea (Ghosh et al. 2023, "GenEval: An object-focused framework for evaluating text-to-image
alignment") with this data's known layout instead of an object detector. The scene layout of
data=captioned_digits is fixed (a 2x2 grid of S/2 cells, or one large digit over the canvas), so a scene is
read with the project's mnist5k digit classifier (`classifier_features` trained at the cell size on the
train digits) in two views:
- cells: a cell is OCCUPIED when it holds at least `min_ink` INK pixels, brighter than a quarter of the
  range (a blank or faint cell is empty, not a guess of the classifier); an occupied cell's digit is the
  classifier's argmax;
- whole: the canvas' central `large_size(S)` square, resized to the cell size (a large digit, drawn as the
  small ones are), classified when the canvas has ink; a LARGE digit crosses the canvas' middle rows,
  which small digits, each inside its cell with MNIST's margin, never do.

Scores per caption (True/False, None where the caption says nothing about it):
    identity   the digits the caption names are read (large: the whole view reads it)
    count      as many digits as the caption says (large: one digit over the canvas, i.e. it is large)
    position   the named cell holds the digit ("in the top left"), or the relation holds: some column
               reads (first, second) top to bottom ("above"), or some row left to right ("left")
    exact      the whole caption: the occupied cells read exactly the caption's digits (as a multiset),
               and position where it applies (large: identity and count)
A blank canvas fails all of them. `summarise` averages them over a prompt set, apart for seen and
held-out compositions (the test split's relation triples never in training captions); N is recorded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genlab.data.captioned_digits import Composition, large_size, parse
from genlab.errors import DataError

CRITERIA = ("identity", "count", "position", "exact")
NOTES = {
    "identity": "the digits the caption names are read in the scene (alignment checker)",
    "count": "as many digits as the caption says (large: one digit over the canvas)",
    "position": "the named cell or relation holds (captions with a position or relation)",
    "exact": "the whole caption holds: exactly its digits, counts, size and places",
}
BATCH = 500
INK = -0.5  # a pixel is ink above a quarter of the range: the faintest of the 5,000 digits at 16x16 has 11 such


@dataclass
class Reading:
    """What the checker reads in a batch of scenes: `occupied (B, 4)` bool, `cells (B, 4)` the digit in
    each cell (-1 when empty), `whole (B,)` the whole view's digit (-1 for a blank canvas), `crosses (B,)`
    ink on the middle rows (a large digit)."""

    occupied: torch.Tensor
    cells: torch.Tensor
    whole: torch.Tensor
    crosses: torch.Tensor


class AlignmentChecker(nn.Module):
    """Reads digits in scenes and scores them against captions (see the module docstring).

    `classifier`: a `ClassifierFeatures` (or any module with `logits`) trained on digits at the cell size
    `image_size // 2`; `min_ink`: ink pixels that make a cell occupied (default: 3% of a cell's pixels,
    8 at 16x16; each of the 5,000 digits drawn small has at least 11, an empty cell 0)."""

    def __init__(self, classifier: nn.Module, image_size: int = 32, min_ink: int | None = None) -> None:
        super().__init__()
        self.classifier, self.image_size = classifier, image_size
        self.half = image_size // 2
        self.min_ink = max(1, round(0.03 * self.half**2)) if min_ink is None else min_ink

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.classifier.parameters()).device
        return torch.cat([self.classifier.logits(b.to(device)).argmax(1).cpu() for b in x.split(BATCH)])

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> Reading:
        """Read scenes `(B, C, S, S)` in [-1, 1]."""
        if images.dim() != 4 or images.shape[-2:] != (self.image_size, self.image_size):
            raise DataError(
                f"the alignment checker reads {self.image_size}x{self.image_size} scenes, got shape "
                f"{tuple(images.shape)}"
            )
        x = images.float().cpu().clamp(-1, 1).mean(1, keepdim=True)  # grey (B, 1, S, S)
        h, b = self.half, len(x)
        cells = torch.stack([x[:, :, r * h : (r + 1) * h, c * h : (c + 1) * h] for r in (0, 1) for c in (0, 1)], 1)
        ink = (cells > INK).flatten(2).sum(-1)  # (B, 4) ink pixels per cell
        occupied = ink >= self.min_ink
        read = self._classify(cells.reshape(b * 4, 1, h, h)).view(b, 4)
        large = large_size(self.image_size)
        border = (self.image_size - large) // 2
        centre = x[:, :, border : border + large, border : border + large]
        centre = F.interpolate(centre, size=(h, h), mode="bilinear", antialias=True, align_corners=False)
        whole = torch.where((x > INK).flatten(1).sum(1) >= self.min_ink, self._classify(centre), -1)
        crosses = (x[:, 0, h - 1 : h + 1] > INK).flatten(1).sum(1) >= 2  # the two middle rows
        return Reading(occupied, torch.where(occupied, read, -1), whole, crosses)

    def score(self, images: torch.Tensor, captions: list[str] | list[Composition]) -> list[dict[str, bool | None]]:
        """Per scene, the criteria of its caption (a string, parsed, or a `Composition`)."""
        if len(images) != len(captions):
            raise DataError(f"{len(images)} scenes for {len(captions)} captions")
        comps = [parse(c) if isinstance(c, str) else c for c in captions]
        reading = self.read(images)
        return [judge(comp, reading, i) for i, comp in enumerate(comps)]


def judge(comp: Composition, reading: Reading, i: int) -> dict[str, bool | None]:
    """The criteria for scene `i` of `reading` against `comp`."""
    cells, occupied = reading.cells[i].tolist(), reading.occupied[i].tolist()
    read = [d for d in cells if d >= 0]
    if comp.kind == "large":
        identity = reading.whole[i].item() == comp.digits[0]
        count = bool(reading.crosses[i])
        return {"identity": identity, "count": count, "position": None, "exact": identity and count}
    identity = set(comp.digits) <= set(read)
    count = sum(occupied) == len(comp.digits)
    position = None
    if comp.kind == "small" and comp.cell is not None:
        position = cells[comp.cell] == comp.digits[0]
    elif comp.kind == "above":
        position = any(cells[c] == comp.digits[0] and cells[c + 2] == comp.digits[1] for c in (0, 1))
    elif comp.kind == "left":
        position = any(cells[2 * r] == comp.digits[0] and cells[2 * r + 1] == comp.digits[1] for r in (0, 1))
    exact = Counter(read) == Counter(comp.digits) and position is not False
    return {"identity": identity, "count": count, "position": position, "exact": exact}


def summarise(
    compositions: list[Composition], scores: list[dict[str, bool | None]], heldout: list[bool]
) -> dict[str, float]:
    """Means of each criterion over the captions where it applies, as `align_<group>/<criterion>` for the
    groups `all`, `seen`, `heldout` and `seen_relations` (the seen relation captions: the like-for-like row
    for `heldout`, which holds relations only); `align_<group>/n`: the captions in the group (N)."""
    relation = [c.relation is not None for c in compositions]
    groups = {
        "all": [True] * len(scores),
        "seen": [not h for h in heldout],
        "heldout": list(heldout),
        "seen_relations": [r and not h for r, h in zip(relation, heldout, strict=True)],
    }
    out: dict[str, float] = {}
    for group, member in groups.items():
        chosen = [s for s, m in zip(scores, member, strict=True) if m]
        if not chosen:
            continue
        out[f"align_{group}/n"] = float(len(chosen))
        for criterion in CRITERIA:
            values = [s[criterion] for s in chosen if s[criterion] is not None]
            if values:
                out[f"align_{group}/{criterion}"] = sum(values) / len(values)
    return out


def alignment_checker(
    image_size: int = 32, seed: int = 0, cache_dir: str | Path = "data", **split: Any
) -> AlignmentChecker:
    """The checker for data=captioned_digits at `image_size` with the run's `seed`: its classifier is the
    mnist5k one trained at the cell size on the same train digits (`split`: val_fraction, test_fraction),
    cached under `cache_dir` (trained once, about a minute on one thread)."""
    from genlab.data.mnist5k import Mnist5kDataModule  # data is imported lazily, as digits_features does
    from genlab.metrics.features import classifier_features

    datamodule = Mnist5kDataModule(image_size=image_size // 2, seed=seed, **split)
    return AlignmentChecker(classifier_features(datamodule, cache_dir), image_size)


class SceneFeatures(nn.Module):
    """A feature space for FID/precision/recall of scenes: the digit classifier's features of the four cells
    and of the whole view, concatenated `(B, 5 * F)`. (The classifier of a single digit sees the scenes'
    parts the way it was trained; one trained on whole scenes would need labels scenes do not have.)"""

    def __init__(self, checker: AlignmentChecker) -> None:
        super().__init__()
        self.checker = checker
        self.classifier = checker.classifier
        self.num_features = 5 * self.classifier.num_features
        self.key = f"scenes-{getattr(self.classifier, 'key', 'classifier')}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, size = self.checker.half, self.checker.image_size
        x = x.float().clamp(-1, 1).mean(1, keepdim=True)
        parts = [x[:, :, r * h : (r + 1) * h, c * h : (c + 1) * h] for r in (0, 1) for c in (0, 1)]
        large = large_size(size)
        border = (size - large) // 2
        centre = x[:, :, border : border + large, border : border + large]
        parts.append(F.interpolate(centre, size=(h, h), mode="bilinear", antialias=True, align_corners=False))
        return torch.cat([self.classifier(p) for p in parts], 1)
