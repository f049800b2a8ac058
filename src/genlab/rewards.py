"""Rewards for fine-tuning a generator from feedback (`model=gpt_feedback`).

A reward is any callable `reward(samples: list[str]) -> list[float]`, one float per sample (the
decoded completions, prompt left out). A reward that also takes a keyword `prompts` is given the
decoded prompt of each sample (`prompts[i]` precedes `samples[i]`), so it can score the text the
prompt and the completion make together. In config it is named by `_target_`; a function taking
options besides the samples is given with `_partial_: true` and those options:

    reward:
      _target_: genlab.rewards.target_words
      _partial_: true
      words: [python, function]

Add your own by writing one function in any importable module and naming it there (a learned
reward model is the same: a function that scores the strings). Higher is better; the trainer
normalises within each group of samples, so the scale matters only for DPO's ranking (none).

The rewards here are in `REWARDS`; tests/test_rewards.py scores blank, garbage and one-token-repeated
samples with each of them (a policy finds such gaps within a few hundred steps): register a new one
with `@registered` and give it adversarial samples there.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from genlab.errors import ConfigError

WORD = re.compile(r"[A-Za-z]+")
MIN_PITCH_CLASSES = 5  # fewer do not establish a key: one note repeated is trivially "in key"

Reward = Callable[..., list[float]]
REWARDS: dict[str, Reward] = {}


def registered(reward: Reward) -> Reward:
    """Add `reward` to REWARDS (the adversarial test runs over every entry)."""
    REWARDS[reward.__name__] = reward
    return reward


def accepts_prompts(reward: Callable) -> bool:
    """Whether `reward` (a function or a functools.partial of one) names a keyword `prompts`."""
    try:
        return "prompts" in inspect.signature(reward).parameters
    except (TypeError, ValueError):  # a callable without a signature: the plain contract
        return False


def _prompts_for(samples: list[str], prompts: list[str] | None) -> list[str | None]:
    if prompts is None:
        return [None] * len(samples)
    if len(prompts) != len(samples):
        raise ValueError(f"{len(prompts)} prompts for {len(samples)} samples: give one prompt per sample")
    return list(prompts)


@lru_cache(maxsize=4)
def corpus_words(path: str | None = None, min_count: int = 2, val_fraction: float = 0.1) -> frozenset[str]:
    """Lower-cased words seen at least `min_count` times in the training part of a text (the first
    1 - val_fraction, as TextDataModule splits it): the file at `path`, or the embedded corpus."""
    if path is None:
        from genlab.data.text import embedded_corpus

        text = embedded_corpus()
    else:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    text = text[: int(len(text) * (1 - val_fraction))]
    counts = Counter(w.lower() for w in WORD.findall(text))
    return frozenset(w for w, c in counts.items() if c >= min_count)


@registered
def known_words(
    samples: list[str],
    path: str | None = None,
    min_count: int = 2,
    val_fraction: float = 0.1,
    *,
    prompts: list[str] | None = None,
) -> list[float]:
    """Known words over all words: spelling, for plain text. A known word is one the training text uses
    (`corpus_words`), counted once however often the sample repeats it (repeating one known word is
    not spelling well). Words cut by the sample's end are left out, and so is the word the prompt cut:
    with `prompts` it is scored whole (the prompt's letters and the sample's, so finishing it well
    earns credit and breaking it off costs); without, a first word that starts the sample is left
    out. A sample without words scores 0."""
    vocabulary = corpus_words(path, min_count, val_fraction)
    scores = []
    for text, prompt in zip(samples, _prompts_for(samples, prompts), strict=True):
        words = _completion_words(text, prompt)
        known = {w for w in (w.lower() for w in words) if w in vocabulary}
        scores.append(len(known) / len(words) if words else 0.0)
    return scores


def _completion_words(text: str, prompt: str | None) -> list[str]:
    """The words `text` writes after `prompt` (see known_words), the last one dropped when the sample's
    end may have cut it."""
    if prompt is None:
        words = WORD.findall(text)
        if text[:1].isalpha():
            words = words[1:]  # it may continue a word the (unknown) prompt began
    else:
        # a word ending where the prompt ends counts when the sample ends it (by a space, a stop...)
        words = [
            m[0] for m in WORD.finditer(prompt + text) if m.end() > len(prompt) or (m.end() == len(prompt) and text)
        ]
    if words and text[-1:].isalpha():
        words = words[:-1]  # the last word may be cut short by the sample's length
    return words


@registered
def target_words(samples: list[str], words: list[str]) -> list[float]:
    """How many times the sample uses any of `words` (whole words, any case), times the fraction of its
    words that are distinct (repeating the word alone earns about one use): steering toward a topic."""
    if not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise ConfigError(f"model.reward.words must list at least one non-empty word, got {words!r}")
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w.strip()) for w in words) + r")\b", re.IGNORECASE)
    scores = []
    for text in samples:
        all_words = [w.lower() for w in re.findall(r"\w+", text)]
        variety = len(set(all_words)) / len(all_words) if all_words else 0.0
        scores.append(len(pattern.findall(text)) * variety)
    return scores


@registered
def substring_count(samples: list[str], text: str = "e") -> list[float]:
    """How many times `text` occurs in the sample: a toy reward that any model can learn quickly (by
    repeating `text`: that is its point)."""
    return [float(sample.count(text)) for sample in samples]


@registered
def python_parses(samples: list[str], *, prompts: list[str] | None = None) -> list[float]:
    """Whether the prompt and the sample together are Python that `ast.parse` accepts: 1 if they are,
    else the fraction of the sample's lines, from the top, that parse with the prompt before them
    (partial credit, so a group of samples is rarely all equal). Times the fraction of distinct lines
    among the sample's lines of code (repeating one line that parses is not writing code). A sample
    without code (blank, or comments only) scores 0. Scoring the sample alone would reward text that
    parses without its prompt (blank lines after `def `) and fail the right continuation."""
    scores = []
    for text, prompt in zip(samples, _prompts_for(samples, prompts), strict=True):
        code = [line.strip() for line in text.split("\n") if line.strip() and not line.strip().startswith("#")]
        if not code:
            scores.append(0.0)
            continue
        prompt = prompt or ""
        lines = (prompt + text).split("\n")
        first = prompt.count("\n")  # the line the sample starts on
        if _parses(prompt + text):
            fraction = 1.0
        else:
            good = next((n for n in range(len(lines) - 1, first, -1) if _parses("\n".join(lines[:n]))), first)
            fraction = (good - first) / (len(lines) - first)
        scores.append(fraction * len(set(code)) / len(code))
    return scores


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return False
    return True


@registered
def molecule_qed(samples: list[str], invalid: float = 0.0) -> list[float]:
    """QED (drug-likeness, Bickerton et al. 2012, in [0, 1]) of each sample read as one SMILES string
    (the first line); `invalid` for text that is not a molecule."""
    qed_of = _qed_function()
    scores = []
    for text in samples:
        lines = text.strip().split("\n")
        value = qed_of(lines[0].strip()) if lines[0].strip() else None
        scores.append(invalid if value is None else float(value))
    return scores


def _qed_function():
    try:  # the molecules data module's own reading of a SMILES string, when this checkout has it
        from genlab.data.molecules import qed_of

        return qed_of
    except ImportError:
        pass
    from rdkit import Chem, RDLogger
    from rdkit.Chem import QED

    RDLogger.DisableLog("rdApp.*")  # one parse error per invalid sample would flood the log

    def qed_of(smiles: str) -> float | None:
        molecule = Chem.MolFromSmiles(smiles)
        return None if molecule is None else QED.qed(molecule)

    return qed_of


@registered
def music_in_key(samples: list[str], invalid: float = 0.0) -> list[float]:
    """Fraction of a chorale's notes in its key (`genlab.data.chorales.in_key`), times the fraction of
    its tokens that decode (a malformed token earns nothing) and times min(1, distinct pitch classes /
    MIN_PITCH_CLASSES); `invalid` for text without a note."""
    from genlab.data.chorales import decode, in_key  # the chorales data module's decoding

    scores = []
    for text in samples:
        piece = decode(text)
        if not piece.notes:
            scores.append(invalid)
            continue
        well_formed = len(piece.notes) / (len(piece.notes) + piece.malformed)  # bar lines and shifts aside
        variety = min(1.0, len({n.pitch % 12 for n in piece.notes}) / MIN_PITCH_CLASSES)
        scores.append(float(in_key(piece.notes)) * well_formed * variety)
    return scores
