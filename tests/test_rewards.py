"""Rewards: one float per sample, for the plain-text, code, molecule and music domains."""

from __future__ import annotations

import importlib.util
from functools import partial

import pytest

from genlab import rewards
from genlab.errors import ConfigError

HAS_RDKIT = importlib.util.find_spec("rdkit") is not None
HAS_MUSIC = importlib.util.find_spec("music21") is not None


def test_known_words_is_the_fraction_of_words_the_training_text_uses(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat. the cat ran. a dog. " * 3 + "VALIDATION ONLY words here", encoding="utf-8")
    scores = rewards.known_words(
        [" The cat sat on.", " xq zzv the dog.", "...", " the dog ran hom"], path=str(corpus), val_fraction=0.3
    )
    # "on" is not in the text; "hom" is left out: a sample ending in a letter may have cut its last word
    assert scores == [3 / 4, 2 / 4, 0.0, 1.0]
    assert rewards.known_words([" validation"], path=str(corpus), val_fraction=0.3) == [0.0]  # held-out text unused
    assert rewards.known_words([" help text, python."])[0] == 1.0  # the embedded corpus by default
    # a known word counts once: repeating it is not spelling well
    assert rewards.known_words([" the the the the."], path=str(corpus), val_fraction=0.3) == [1 / 4]


def test_known_words_does_not_penalise_finishing_the_word_the_prompt_cut() -> None:
    prompt = "Return the argum"
    faithful, broken = "ent list of the function.", " list of the function."
    with_prompt = rewards.known_words([faithful, broken], prompts=[prompt, prompt])
    assert with_prompt[0] == 1.0 > with_prompt[1]  # "argument" is scored whole; "argum" is not a word
    alone = rewards.known_words([faithful, broken])  # no prompt given: the first word may be cut, left out
    assert alone[0] == alone[1] == 1.0


def test_target_words_and_substring_count() -> None:
    assert rewards.target_words(["Python is a python; pythons", "no"], words=["python"]) == [2.0 * 4 / 5, 0.0]
    assert rewards.substring_count(["eee", "abc"], text="e") == [3.0, 0.0]


@pytest.mark.parametrize("words", [[], [""], ["  "]])
def test_target_words_refuses_no_words(words) -> None:
    with pytest.raises(ConfigError, match="model.reward.words"):
        rewards.target_words(["some plain words here"], words=words)


def test_python_parses_with_partial_credit() -> None:
    scores = rewards.python_parses(["def f(x):\n    return x\n", "x = 1\ny = 2\nz = (", "))("])
    assert scores == [1.0, pytest.approx(2 / 3), 0.0]


def test_python_parses_scores_the_prompt_and_the_completion_together() -> None:
    prompt = "\n\ndef "  # experiment=gpt_code's prompt
    good, blank = "area(r):\n    return 3.14159 * r * r\n", "\n\n\n\n\n\n"
    assert rewards.python_parses([good, blank, ""], prompts=[prompt] * 3) == [1.0, 0.0, 0.0]
    cut = "area(r):\n    return r\n    x = ("  # the last line is cut by the completion's length
    assert rewards.python_parses([cut], prompts=[prompt]) == [pytest.approx(2 / 3)]


@pytest.mark.skipif(not HAS_RDKIT, reason="rdkit is not installed")
def test_molecule_qed_scores_valid_smiles_only() -> None:
    ethanol, aspirin = rewards.molecule_qed(["CCO", "CC(=O)Oc1ccccc1C(=O)O\nmore"])
    assert 0 < ethanol < aspirin < 1  # aspirin is the more drug-like (QED ~0.55 vs ~0.41)
    assert rewards.molecule_qed(["C1CC(", ""], invalid=-1.0) == [-1.0, -1.0]


@pytest.mark.skipif(not HAS_MUSIC, reason="music21 is not installed")
def test_music_in_key_counts_malformed_tokens_and_needs_a_key() -> None:
    scores = rewards.music_in_key(["not music at all", " 60:4 lorem ipsum 999:999 +0 ::: the end "], invalid=-1.0)
    assert scores[0] == -1.0
    assert scores[1] < 0.1  # one note among seven malformed tokens: not a chorale in its key


# Per reward: (options, prompt, a good completion, adversarial completions). The adversaries are what
# a policy finds first: nothing, garbage, and one token repeated (for the toys whose point is to
# repeat a string, a token other than that string).
SCALE = " | 67:4 62:4 59:4 43:4 +4 | 67:8 64:4 60:4 48:4 +4 66:4 62:4 +4 | 69:4 65:4 60:4 53:4 +4 71:4 55:4 +4 "
ADVERSARIAL = {
    "known_words": (
        {},
        "Return the argum",
        "ent list of the function, when the class attribute is used.",
        ["", "    \n\n  ", "xq zzvk qqrx blorp wuzz.", " the the the the the the the.", "e" * 48, "ent ent ent ent."],
    ),
    "target_words": (
        {"words": ["python", "function"]},
        "\n",
        "A Python function returns a value to the caller.",
        ["", "   \n", "#$%^ zzq xxv", "python python python python python python python", "x" * 40],
    ),
    "substring_count": ({"text": "e"}, "\n", "eeee eee", ["", "   ", "xyz qqq", "a" * 40]),
    "python_parses": (
        {},
        "\n\ndef ",
        "area(r):\n    return 3.14159 * r * r\n",
        ["", "\n\n\n\n\n\n", "# a comment\n# another\n", "(((( ]] ::", "x" * 40, "pass\n" * 8, "\n" + "x = 1\n" * 8],
    ),
    "molecule_qed": ({}, "\n", "CC(=O)Oc1ccccc1C(=O)O\n", ["", "\n\n", "zz((]]", "C" * 40, "c" * 40, "(" * 20]),
    "music_in_key": (
        {},
        "\n",
        SCALE,
        ["", "   ", "lorem ipsum ::: 999:999", " 60:4 lorem ipsum 999:999 +0 ::: the end ", " 60:4" * 30 + " "],
    ),
}
NEEDS = {"molecule_qed": HAS_RDKIT, "music_in_key": HAS_MUSIC}


@pytest.mark.parametrize("name", sorted(rewards.REWARDS))
def test_every_reward_scores_adversarial_samples_below_a_good_one(name: str) -> None:
    """Blank, garbage and repeated-token completions must not earn a reward's top score: a policy
    trained on a reward finds such gaps first. A new reward in REWARDS needs its entry in ADVERSARIAL."""
    assert name in ADVERSARIAL, f"reward {name} has no adversarial samples in tests/test_rewards.py::ADVERSARIAL"
    if not NEEDS.get(name, True):
        pytest.skip(f"{name} needs an optional package that is not installed")
    options, prompt, good, adversaries = ADVERSARIAL[name]
    reward = partial(rewards.REWARDS[name], **options)
    samples = [good, *adversaries]
    given = {"prompts": [prompt] * len(samples)} if rewards.accepts_prompts(reward) else {}
    scores = reward(samples, **given)
    assert len(scores) == len(samples)
    top, rest = scores[0], scores[1:]
    beaten = [(sample, score) for sample, score in zip(adversaries, rest, strict=True) if score >= top]
    assert not beaten, f"{name}: these score at least the good sample's {top:.3g}: {beaten}"
    assert top > 0


def test_accepts_prompts_sees_through_partials() -> None:
    assert rewards.accepts_prompts(partial(rewards.known_words, path=None))
    assert rewards.accepts_prompts(rewards.python_parses)
    assert not rewards.accepts_prompts(partial(rewards.substring_count, text="e"))
    with pytest.raises(ValueError, match="one prompt per sample"):
        rewards.python_parses(["x", "y"], prompts=["\n"])
