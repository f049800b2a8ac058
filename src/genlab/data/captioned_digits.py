"""Captioned scenes of real MNIST digits, composed on the fly, for text-to-image models.

Layout (canvas `S`x`S`, default 32, split into a 2x2 grid of `S/2` cells numbered 0 top left, 1 top
right, 2 bottom left, 3 bottom right):
- a LARGE digit: one 28x28 digit over the whole canvas (resized to `S - S/8`, centred: at 32 the digit
  as it is, with a 2-pixel border, the usual padded MNIST);
- SMALL digits: one to three digits resized to `S/2`, each filling one cell.

Compositions (what a caption says; `Composition`) and their templates (`TEMPLATES`, with variety in
words, numerals and phrasing):
    large   "a seven", "the digit 7", "a big 7"                    identity (and size)
    small   "a small 2", "a tiny two", "a 4 in the top left"       size, and position when a cell is named
    count   "two threes", "three small 5s"                          count: 2 or 3 small digits of one class
    above   "a 3 above a 7", "a seven under a 3"                    relation: same column, first on top
    left    "a 5 on the left and a 1 on the right", "a 1 right of a 5"   relation: same row, first on the left
`parse(caption)` reads every template back to its `Composition` exactly (the checker uses it).

Splits are by digit image: the 5,000 digits of data=mnist5k split with `split_indices` and the same seed
and fractions (so the mnist5k classifier the alignment checker uses was trained on exactly the train
digits). Each scene is a pure function of (seed, split, index): `random.Random` keyed by that string
(sha512, the same in every process), so batches are reproducible and the image ones' `ShuffledBatches`
order (keyed by seed and the fit loop's position) resumes exactly mid-epoch. Scene images are pasted
from pre-resized digits when a batch is asked for; the scenes' ground truth (`Scene`: composition,
digit classes, image ids, cells, boxes) stays in `datamodule.scenes[split]`.

Held-out compositions: a fixed share of the relation triples (axis, first digit, second digit), never
drawn for train or val; the test split draws them for `heldout_share` of its relation scenes, so a model
can be scored on relations it never saw captioned.

Captions are encoded with `CharTokenizer(alphabet)`: ids are positions in `alphabet`, whose first
character is the pad (id 0, never in a caption); a batch is `(x, y)`, x `(B, C, S, S)` in [-1, 1], y
`(B, context)` int64 right-padded with 0. The empty caption (all pad) is the unconditional one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from genlab.data.images import ImageDataModule, split_indices, to_model_range
from genlab.data.mnist5k import read_mnist5k
from genlab.errors import ConfigError, DataError
from genlab.tokenizers import CharTokenizer

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PLURALS = ("zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights", "nines")
CELLS = ("top left", "top right", "bottom left", "bottom right")  # cell k: row k // 2, column k % 2
COUNTS = {2: "two", 3: "three"}
KINDS = ("large", "small", "count", "above", "left")
KIND_WEIGHTS = (0.15, 0.2, 0.15, 0.25, 0.25)  # relations most: they are what text adds over a label
ALPHABET = "_ 0123456789abcdefghijklmnopqrstuvwxyz"  # "_" is the pad (id 0)


@dataclass(frozen=True)
class Composition:
    """What a caption says. `digits`: large/small (d,); count (d,) * n; above (top, bottom); left (left,
    right). `cell`: the cell a small digit's caption names (None: anywhere)."""

    kind: str
    digits: tuple[int, ...]
    cell: int | None = None

    @property
    def relation(self) -> tuple[str, int, int] | None:
        """(axis, first, second) for a relation, the unit held out for generalisation."""
        return (self.kind, *self.digits) if self.kind in ("above", "left") else None


@dataclass(frozen=True)
class Scene:
    """One captioned scene: its caption, what the caption says, and the ground truth drawn. `cells[i]`
    is where `composition`-order digit i sits (-1: the large digit over the whole canvas); `image_ids[i]`
    its row in the 5,000 digits."""

    caption: str
    composition: Composition
    cells: tuple[int, ...]
    image_ids: tuple[int, ...]

    def boxes(self, image_size: int) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) in pixels of each digit, in `digits` order."""
        half, large = image_size // 2, large_size(image_size)
        border = (image_size - large) // 2
        return [
            (border, border, large, large) if c < 0 else ((c // 2) * half, (c % 2) * half, half, half)
            for c in self.cells
        ]


def large_size(image_size: int) -> int:
    """Side of a large digit: 28 on a 32 canvas (MNIST's own size and border)."""
    return image_size - 2 * (image_size // 16)


# ---- captions -------------------------------------------------------------------------------------------


def article(word: str) -> str:
    """'a' or 'an' by sound: an eight, an 8, but a one (its sound is 'won')."""
    return "an" if word in ("eight", "8") else "a"


def a(word: str) -> str:
    return f"{article(word)} {word}"


# Each template turns the digits' spoken forms into a caption; `x`, `y` are each a word or a numeral.
Template = Callable[..., str]
TEMPLATES: dict[str, list[Template]] = {
    "large": [
        lambda x: a(x),
        lambda x: f"the digit {x}",
        lambda x: f"a large {x}",
        lambda x: f"a big {x}",
    ],
    "small": [
        lambda x: f"a small {x}",
        lambda x: f"a tiny {x}",
        lambda x: f"a little {x}",
    ],
    "small_at": [  # a small digit in a named cell: `pos` one of CELLS
        lambda x, pos: f"{a(x)} in the {pos}",
        lambda x, pos: f"a small {x} in the {pos}",
        lambda x, pos: f"{a(x)} in the {pos} corner",
    ],
    "count": [  # `n` a count word, `xs` a plural (word or numeral + s)
        lambda n, xs: f"{n} {xs}",
        lambda n, xs: f"{n} small {xs}",
    ],
    "above": [  # x on top of y
        lambda x, y: f"{a(x)} above {a(y)}",
        lambda x, y: f"{a(x)} over {a(y)}",
        lambda x, y: f"{a(x)} on top of {a(y)}",
        lambda x, y: f"{a(y)} below {a(x)}",
        lambda x, y: f"{a(y)} under {a(x)}",
    ],
    "left": [  # x left of y
        lambda x, y: f"{a(x)} left of {a(y)}",
        lambda x, y: f"{a(x)} to the left of {a(y)}",
        lambda x, y: f"{a(y)} right of {a(x)}",
        lambda x, y: f"{a(y)} to the right of {a(x)}",
        lambda x, y: f"{a(x)} on the left and {a(y)} on the right",
        lambda x, y: f"{a(y)} on the right and {a(x)} on the left",
    ],
}


def spoken(digit: int, word: bool) -> str:
    return WORDS[digit] if word else str(digit)


def plural(digit: int, word: bool) -> str:
    return PLURALS[digit] if word else f"{digit}s"


def write_caption(composition: Composition, template: int, words: Sequence[bool]) -> str:
    """The caption of `composition` by template number `template` of its kind, each digit spoken as a word
    (`words[i]` True) or a numeral."""
    kind, d = composition.kind, composition.digits
    if kind == "large":
        return TEMPLATES["large"][template](spoken(d[0], words[0]))
    if kind == "small" and composition.cell is None:
        return TEMPLATES["small"][template](spoken(d[0], words[0]))
    if kind == "small":
        return TEMPLATES["small_at"][template](spoken(d[0], words[0]), CELLS[composition.cell])
    if kind == "count":
        return TEMPLATES["count"][template](COUNTS[len(d)], plural(d[0], words[0]))
    return TEMPLATES[kind][template](spoken(d[0], words[0]), spoken(d[1], words[1]))


def template_family(composition: Composition) -> str:
    return "small_at" if composition.kind == "small" and composition.cell is not None else composition.kind


_D = r"(zero|one|two|three|four|five|six|seven|eight|nine|[0-9])"
_P = r"(zeros|ones|twos|threes|fours|fives|sixes|sevens|eights|nines|[0-9]s)"
_A = r"an? "
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], Composition]]] = []


def _digit(text: str) -> int:
    return int(text) if text.isdigit() else WORDS.index(text)


def _pattern(regex: str) -> Callable:
    def register(read: Callable[[re.Match[str]], Composition]) -> Callable:
        _PATTERNS.append((re.compile(f"^{regex}$"), read))
        return read

    return register


@_pattern(f"(?:{_A}|the digit |a large |a big ){_D}")
def _large(m: re.Match[str]) -> Composition:
    return Composition("large", (_digit(m[1]),))


@_pattern(f"a (?:small|tiny|little) {_D}")
def _small(m: re.Match[str]) -> Composition:
    return Composition("small", (_digit(m[1]),))


@_pattern(f"(?:{_A}|a small ){_D} in the (top|bottom) (left|right)(?: corner)?")
def _small_at(m: re.Match[str]) -> Composition:
    return Composition("small", (_digit(m[1]),), CELLS.index(f"{m[2]} {m[3]}"))


@_pattern(f"(two|three) (?:small )?{_P}")
def _count(m: re.Match[str]) -> Composition:
    n = {v: k for k, v in COUNTS.items()}[m[1]]
    digit = int(m[2][0]) if m[2][0].isdigit() else PLURALS.index(m[2])
    return Composition("count", (digit,) * n)


@_pattern(f"{_A}{_D} (above|over|on top of|below|under|left of|to the left of|right of|to the right of) {_A}{_D}")
def _relation(m: re.Match[str]) -> Composition:
    first, word, second = _digit(m[1]), m[2], _digit(m[3])
    if word in ("below", "under", "right of", "to the right of"):
        first, second = second, first
    return Composition("above" if word in ("above", "over", "on top of", "below", "under") else "left", (first, second))


@_pattern(f"{_A}{_D} on the (left|right) and {_A}{_D} on the (left|right)")
def _sides(m: re.Match[str]) -> Composition:
    if m[2] == m[4]:
        raise DataError(f"caption {m[0]!r}: both digits on the {m[2]}")
    first, second = _digit(m[1]), _digit(m[3])
    return Composition("left", (first, second) if m[2] == "left" else (second, first))


def parse(caption: str) -> Composition:
    """The `Composition` a template caption says; a DataError for a caption no template writes."""
    text = " ".join(caption.strip().lower().split())
    for pattern, read in _PATTERNS:
        if (m := pattern.match(text)) is not None:
            return read(m)
    raise DataError(
        f"caption {caption!r} does not follow the captioned_digits templates (e.g. 'a 3 above a 7', 'two fives')"
    )


def max_caption_length() -> int:
    """The longest caption any template writes (for `data.context`)."""
    longest = 0
    for comp in all_compositions():
        for t in range(len(TEMPLATES[template_family(comp)])):
            for words in ((True, True), (False, False), (True, False), (False, True)):
                longest = max(longest, len(write_caption(comp, t, words)))
    return longest


def all_compositions() -> list[Composition]:
    out = [Composition("large", (d,)) for d in range(10)]
    out += [Composition("small", (d,), cell) for d in range(10) for cell in (None, 0, 1, 2, 3)]
    out += [Composition("count", (d,) * n) for d in range(10) for n in COUNTS]
    out += [Composition(kind, (x, y)) for kind in ("above", "left") for x in range(10) for y in range(10) if x != y]
    return out


def heldout_relations(fraction: float, seed: int) -> frozenset[tuple[str, int, int]]:
    """A fixed share of the 180 relation triples (axis, first, second), drawn by `seed`."""
    triples = [c.relation for c in all_compositions() if c.relation is not None]
    rng = random.Random(f"heldout-{seed}")
    return frozenset(rng.sample(triples, round(fraction * len(triples))))


# ---- scenes ---------------------------------------------------------------------------------------------


def draw_scene(
    rng: random.Random,
    pools: Sequence[Sequence[int]],
    heldout: frozenset[tuple[str, int, int]],
    heldout_share: float,
) -> Scene:
    """One scene: a composition (by KIND_WEIGHTS; relations from the held-out triples with probability
    `heldout_share`, else from the others), its caption and where its digits go. `pools[d]`: the ids of
    this split's images of digit d."""
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    if kind == "large":
        comp, cells = Composition("large", (rng.randrange(10),)), (-1,)
    elif kind == "small":
        cell = rng.randrange(4)
        comp = Composition("small", (rng.randrange(10),), cell if rng.random() < 0.5 else None)
        cells = (cell,)
    elif kind == "count":
        n = rng.choice(sorted(COUNTS))
        comp, cells = Composition("count", (rng.randrange(10),) * n), tuple(sorted(rng.sample(range(4), n)))
    else:
        if heldout and rng.random() < heldout_share:
            _, x, y = rng.choice(sorted(t for t in heldout if t[0] == kind))
        else:
            x, y = rng.choice([(x, y) for x in range(10) for y in range(10) if x != y and (kind, x, y) not in heldout])
        comp, line = Composition(kind, (x, y)), rng.randrange(2)
        cells = (line, line + 2) if kind == "above" else (2 * line, 2 * line + 1)  # a column, or a row
    family = template_family(comp)
    words = [rng.random() < 0.5 for _ in comp.digits]
    caption = write_caption(comp, rng.randrange(len(TEMPLATES[family])), words)
    image_ids = tuple(rng.choice(pools[d]) for d in comp.digits)
    return Scene(caption, comp, cells, image_ids)


@lru_cache(maxsize=2)
def rendered_digits(image_size: int, channels: int, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits drawn large `(5000, C, S, S)` and at cell size `(5000, C, S/2, S/2)`, in [-1, 1] on
    the `levels` grid. Once per process and size (resizing them all takes about a second)."""
    images = read_mnist5k()[0]
    large = to_model_range(images, channels, large_size(image_size), levels)
    border = (image_size - large.shape[-1]) // 2
    large = F.pad(large, (border,) * 4, value=-1.0)
    return large, to_model_range(images, channels, image_size // 2, levels)


class CaptionedScenes(Dataset):
    """A split's scenes. Indexed with a list of indices (a batch from `ShuffledBatches`), it pastes the
    scenes' digits onto blank canvases: images `(B, C, S, S)` in [-1, 1], captions `(B, context)` int64."""

    def __init__(self, scenes: list[Scene], tokens: torch.Tensor, large: torch.Tensor, small: torch.Tensor) -> None:
        """`large`: every digit rendered large `(5000, C, S, S)`; `small`: every digit at cell size
        `(5000, C, S/2, S/2)`; `tokens`: the captions `(N, context)`."""
        self.scenes, self.tokens, self.large, self.small = scenes, tokens, large, small

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = [index] if isinstance(index, int) else list(index)
        channels, size = self.large.shape[1], self.large.shape[-1]
        half = size // 2
        images = torch.full((len(index), channels, size, size), -1.0)
        for row, i in enumerate(index):
            scene = self.scenes[i]
            for cell, image_id in zip(scene.cells, scene.image_ids, strict=True):
                if cell < 0:
                    images[row] = self.large[image_id]
                else:
                    top, left = (cell // 2) * half, (cell % 2) * half
                    images[row, :, top : top + half, left : left + half] = self.small[image_id]
        return images, self.tokens[torch.as_tensor(index)]


class CaptionedDigitsDataModule(ImageDataModule):
    """Captioned scenes of MNIST digits (see the module docstring): batches `(images, caption tokens)`.

    `train_scenes`/`val_scenes`/`test_scenes`: scenes per split (an epoch is `train_scenes` of them);
    `heldout_fraction`: share of relation triples held out of train and val; `heldout_share`: share of
    the test split's relation scenes drawn from them."""

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 1,
        levels: int = 256,
        alphabet: str = ALPHABET,
        context: int = 48,
        train_scenes: int = 20000,
        val_scenes: int = 1000,
        test_scenes: int = 1000,
        heldout_fraction: float = 0.1,
        heldout_share: float = 0.5,
        num_classes: int = 10,
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, num_classes=num_classes, levels=levels, **kwargs)
        if image_size < 16 or image_size % 2:
            raise ConfigError(f"data.image_size must be even and at least 16 (a 2x2 grid of digits), got {image_size}")
        if len(alphabet) < 2 or len(set(alphabet)) != len(alphabet):
            raise ConfigError(f"data.alphabet must list distinct characters, the pad first: got {alphabet!r}")
        missing = sorted(set(ALPHABET[1:]) - set(alphabet[1:]))
        if missing:
            raise ConfigError(f"data.alphabet lacks characters the captions use: {''.join(missing)!r}")
        longest = max_caption_length()
        if context < longest:
            raise ConfigError(f"data.context={context} is shorter than the longest caption ({longest} characters)")
        for name, value in (("train_scenes", train_scenes), ("val_scenes", val_scenes), ("test_scenes", test_scenes)):
            if value < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {value}")
        if not 0 <= heldout_fraction < 1 or not 0 <= heldout_share <= 1:
            raise ConfigError("data.heldout_fraction must be in [0, 1) and data.heldout_share in [0, 1]")
        self.alphabet, self.context = alphabet, context
        self.tokenizer = CharTokenizer(alphabet)
        self.sizes = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
        self.heldout = heldout_relations(heldout_fraction, self.seed)
        self.heldout_share = heldout_share
        self.scenes: dict[str, list[Scene]] = {}

    def describe(self) -> str:
        return "data=captioned_digits"

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions to `(N, context)` int64 ids, right-padded with 0. Refused in one line: a caption longer
        than `data.context`, or with characters outside the alphabet."""
        out = torch.zeros(len(captions), self.context, dtype=torch.long)
        for row, caption in enumerate(captions):
            if len(caption) > self.context:
                raise ConfigError(
                    f"caption {caption!r} has {len(caption)} characters, more than data.context={self.context}"
                )
            if any(c == self.alphabet[0] for c in caption):
                raise DataError(f"caption {caption!r} holds the pad character {self.alphabet[0]!r}")
            if caption:
                out[row, : len(caption)] = torch.from_numpy(self.tokenizer.encode(caption).astype("int64"))
        return out

    def is_heldout(self, composition: Composition) -> bool:
        return composition.relation in self.heldout

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        labels = read_mnist5k()[1]
        large, small = rendered_digits(self.image_size, self.channels, self.levels)
        by_image = split_indices(len(labels), self.val_fraction, self.test_fraction, self.seed)
        splits, asked = {}, {"train": True, "val": self.val_fraction > 0, "test": self.test_fraction > 0}
        label_of = labels.tolist()
        for split, ids in by_image.items():
            pools = [sorted(i for i in ids if label_of[i] == d) for d in range(10)]
            if asked[split] and any(not pool for pool in pools):
                raise DataError(
                    f"{self.describe()}: the {split} split lacks a digit class: raise data.{split}_fraction"
                    if split != "train"
                    else f"{self.describe()}: the train split lacks a digit class: lower the val/test fractions"
                )
            share = self.heldout_share if split == "test" else 0.0
            scenes = [
                draw_scene(random.Random(f"{self.seed}-{split}-{i}"), pools, self.heldout, share)
                for i in range(self.sizes[split] if asked[split] else 0)
            ]
            self.scenes[split] = scenes
            tokens = self.encode([s.caption for s in scenes])
            splits[split] = CaptionedScenes(scenes, tokens, large, small)
        self.check_splits(splits, asked)
        self.splits = splits

    def captions(self, split: str) -> list[str]:
        self.setup("fit")
        return [s.caption for s in self.scenes[split]]
