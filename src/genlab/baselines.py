"""Trivial baselines a generative model must beat: a character n-gram model (text), and for
text-to-image on data=captioned_digits a retrieval baseline and a label-conditioned model's view.

`NgramModel(order)` predicts each character from the `order - 1` characters before it, smoothed by
Witten-Bell interpolation (Witten & Bell 1991; Chen & Goodman 1998, "An empirical study of smoothing
techniques for language modeling", section 2.5), which needs no tuning constant:

    p(c | h) = (count(h, c) + t(h) * p(c | h')) / (count(h) + t(h))

`h'` is `h` without its oldest character, `count(h)` the times the context `h` was seen, `t(h)` the
number of distinct characters seen after it; the recursion ends at the uniform distribution over the
vocabulary (the training characters plus one slot for any character never seen). Every character
thus has a probability above zero, and an unseen context falls back to the shorter ones.
`bits_per_char` is directly comparable to a char-level GPT's `val/bpc` (its loss / ln 2).

Sampling uses the same mixture read as a process: at context `h`, with probability
count(h) / (count(h) + t(h)) draw from the characters seen after `h` in proportion to their counts,
else back off to `h'` (and at the bottom draw uniformly among the training characters). That is
exact for the formula above (less the unseen slot) and costs O(order) per character.

    model = NgramModel(order=5).fit(train_text)
    model.bits_per_char(val_text)                            # bits per character
    model.sample(n=10, length=200, prompt="def ", seed=0)    # continuations, prompt left out

Text-to-image baselines (both obey the text-to-image contract `sample(n, prompts=[...]) -> (n, C, S, S)`):
- `RetrievalBaseline(datamodule)` returns, for each prompt, the TRAINING scene whose caption matches it
  best (most shared words and word pairs; ties drawn by seed): perfect on captions seen in training, and
  it cannot compose a relation it never saw ("a 3 above a 7" finds "a 7 above a 3" or "a 3 above a 9").
- `LabelConditionedView(model, image_size)` lets a class-conditional image model (`sample(n, labels=)`)
  answer the captions a label can express: one large digit ("a seven", "the digit 7"); its digit is resized
  and centred as data=captioned_digits draws a large one. Other captions are refused (`expressible`).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict

import torch
import torch.nn.functional as F

from genlab.data.captioned_digits import large_size, parse
from genlab.errors import ConfigError, DataError


class NgramModel:
    """A character n-gram model with Witten-Bell interpolated smoothing (see the module docstring)."""

    def __init__(self, order: int = 5) -> None:
        """`order`: the n of the n-grams (the context is the `order - 1` characters before)."""
        if order < 1:
            raise ConfigError(f"NgramModel order must be at least 1, got {order}")
        self.order = order
        # counts[k][context] = Counter of the next characters, for contexts of length k (0..order-1)
        self.counts: list[dict[str, Counter[str]]] = [defaultdict(Counter) for _ in range(order)]
        self.vocab: list[str] = []
        self._stats: list[dict[str, tuple[int, int]]] = []  # per context: (count(h), t(h))
        self._draws: dict[str, tuple[list[str], list[int]]] = {}  # per context: characters, cumulative counts

    def fit(self, text: str | list[str]) -> NgramModel:
        """Count the n-grams of `text` (or of each text of a list: no n-gram spans two). Returns self."""
        texts = [text] if isinstance(text, str) else list(text)
        if not any(texts):
            raise DataError("NgramModel.fit: the text is empty")
        for piece in texts:
            for k in range(self.order):
                table = self.counts[k]
                for i in range(k, len(piece)):
                    table[piece[i - k : i]][piece[i]] += 1
        self.vocab = sorted(self.counts[0][""])
        self._stats = [{h: (sum(c.values()), len(c)) for h, c in table.items()} for table in self.counts]
        self._draws = {}
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 1  # one slot for characters never seen in training

    def _context(self, text: str) -> str:
        if not self.vocab:
            raise DataError("NgramModel: call fit(text) first")
        return text[max(0, len(text) - self.order + 1) :] if self.order > 1 else ""

    def prob(self, context: str, char: str) -> float:
        """p(char | the last order-1 characters of context)."""
        context = self._context(context)
        p = 1.0 / self.vocab_size
        for k in range(len(context) + 1):  # from the empty context up to the longest
            h = context[len(context) - k :]
            stats = self._stats[k].get(h)
            if stats is None:
                break  # a longer context containing an unseen one is unseen too
            total, types = stats
            p = (self.counts[k][h].get(char, 0) + types * p) / (total + types)
        return p

    def bits_per_char(self, text: str | list[str]) -> float:
        """The mean of -log2 p(c | context) over the characters of `text` (each text of a list starts with
        an empty context, as in `fit`)."""
        texts = [text] if isinstance(text, str) else list(text)
        total, count = 0.0, 0
        for piece in texts:
            for i, char in enumerate(piece):
                total -= math.log2(self.prob(piece[max(0, i - self.order + 1) : i], char))
                count += 1
        if count == 0:
            raise DataError("NgramModel.bits_per_char: the text is empty")
        return total / count

    def _draw(self, context: str, rng: random.Random) -> str:
        for k in range(len(context), -1, -1):  # from the longest context down
            h = context[len(context) - k :]
            stats = self._stats[k].get(h)
            if stats is None:
                continue
            total, types = stats
            if rng.random() * (total + types) < total:  # stay: draw in proportion to the counts after h
                if h not in self._draws:
                    chars, counts = zip(*self.counts[k][h].items(), strict=True)
                    self._draws[h] = (list(chars), list(itertools.accumulate(counts)))
                chars, cumulative = self._draws[h]
                return rng.choices(chars, cum_weights=cumulative)[0]
        return rng.choice(self.vocab)

    def sample(self, n: int, length: int, prompt: str = "", seed: int = 0) -> list[str]:
        """`n` continuations of `prompt`, `length` characters each (the prompt left out), drawn with
        Python's `random.Random(seed)`: the same seed gives the same texts."""
        self._context("")
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            text = prompt
            for _ in range(length):
                text += self._draw(self._context(text), rng)
            out.append(text[len(prompt) :])
        return out


def caption_grams(caption: str) -> set[str]:
    """The words and adjacent word pairs of a caption (what `RetrievalBaseline` matches on)."""
    words = caption.lower().split()
    return set(words) | {f"{x} {y}" for x, y in itertools.pairwise(words)}


class RetrievalBaseline:
    """The training scene whose caption shares the most words and word pairs with the prompt (module
    docstring). `datamodule`: a set-up-able `CaptionedDigitsDataModule` (its train split is the library)."""

    def __init__(self, datamodule) -> None:
        datamodule.setup("fit")
        self.scenes = datamodule.splits["train"]  # indexed with a list: (images, caption ids)
        by_caption: dict[str, list[int]] = defaultdict(list)
        for i, scene in enumerate(datamodule.scenes["train"]):
            by_caption[scene.caption].append(i)
        self.captions = sorted(by_caption)
        self.members = [by_caption[c] for c in self.captions]
        grams = sorted(set().union(*(caption_grams(c) for c in self.captions)))
        self.gram_index = {g: k for k, g in enumerate(grams)}
        self.table = torch.zeros(len(self.captions), len(grams))  # (captions, grams) 0/1
        for row, caption in enumerate(self.captions):
            self.table[row, [self.gram_index[g] for g in caption_grams(caption)]] = 1.0

    def retrieve(self, prompt: str, rng: random.Random) -> int:
        """The index of the training scene returned for `prompt`."""
        query = torch.zeros(len(self.gram_index))
        known = [self.gram_index[g] for g in caption_grams(prompt) if g in self.gram_index]
        query[known] = 1.0
        overlap = self.table @ query - 1e-3 * self.table.sum(1)  # fewest extra words among equal overlaps
        best = torch.nonzero(overlap == overlap.max()).flatten().tolist()
        return rng.choice(self.members[rng.choice(best)])

    def sample(
        self, n: int, prompts: list[str], guidance: float | None = None, steps: int | None = None, seed: int = 0
    ):
        """`(n, C, S, S)` training scenes, one per prompt (`guidance`, `steps`: accepted, unused)."""
        if len(prompts) != n:
            raise ConfigError(f"RetrievalBaseline.sample: {len(prompts)} prompts for n={n}")
        rng = random.Random(seed)
        return self.scenes[[self.retrieve(p, rng) for p in prompts]][0]


class LabelConditionedView:
    """A class-conditional model (`sample(n, labels=(n,) int64)`, digits 0-9) drawing the captions a label
    expresses: one large digit. Its samples are resized to the large digit's size and centred on the
    `image_size` canvas of data=captioned_digits."""

    def __init__(self, model, image_size: int = 32) -> None:
        self.model, self.image_size = model, image_size

    @staticmethod
    def expressible(prompt: str) -> bool:
        try:
            return parse(prompt).kind == "large"
        except DataError:
            return False

    def sample(self, n: int, prompts: list[str], guidance: float | None = None, steps: int | None = None, **kwargs):
        if len(prompts) != n:
            raise ConfigError(f"LabelConditionedView.sample: {len(prompts)} prompts for n={n}")
        refused = [p for p in prompts if not self.expressible(p)]
        if refused:
            raise DataError(f"a class label cannot express {refused[0]!r}: only one large digit ('a seven')")
        labels = torch.tensor([parse(p).digits[0] for p in prompts])
        options = {k: v for k, v in (("guidance", guidance), ("steps", steps)) if v is not None}
        x = self.model.sample(n, labels=labels, **options, **kwargs).float().clamp(-1, 1).cpu()
        large = large_size(self.image_size)
        x = F.interpolate(x, size=(large, large), mode="bilinear", antialias=True, align_corners=False)
        border = (self.image_size - large) // 2
        return F.pad(x, (border,) * 4, value=-1.0)
