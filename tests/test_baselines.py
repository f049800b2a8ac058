import math

import pytest

from genlab.baselines import NgramModel
from genlab.errors import ConfigError, DataError

TEXT = "def add(a, b):\n    return a + b\n\n" * 20 + "def sub(a, b):\n    return a - b\n\n" * 20


def test_probabilities_sum_to_one_and_unseen_characters_are_possible():
    model = NgramModel(order=3).fit(TEXT)
    for context in ("", "de", "zz", "a "):  # seen, unseen and short contexts
        total = sum(model.prob(context, c) for c in model.vocab) + model.prob(context, "\x00")
        assert math.isclose(total, 1.0, rel_tol=1e-9)
    assert 0 < model.prob("de", "\x00") < 1e-3
    assert model.prob("xyzde", "f") == model.prob("de", "f")  # only the last order-1 characters count
    long = NgramModel(order=6).fit(TEXT)  # a context shorter than order-1 is used whole
    assert long.prob("def ", "a") + long.prob("def ", "s") > 0.9


def test_longer_context_fits_better_and_uniform_is_the_ceiling():
    held_out = "def add(a, b):\n    return a + b\n"
    bpc = [NgramModel(order).fit(TEXT).bits_per_char(held_out) for order in (1, 3, 6)]
    assert bpc[0] < math.log2(NgramModel(1).fit(TEXT).vocab_size)  # better than uniform
    assert bpc[2] < bpc[1] < bpc[0]
    assert bpc[2] < 0.5  # a memorised pattern is nearly free


def test_sample_is_seeded_and_follows_the_data():
    model = NgramModel(order=6).fit(TEXT)
    a = model.sample(n=3, length=40, prompt="def ", seed=1)
    assert a == model.sample(n=3, length=40, prompt="def ", seed=1)
    assert a != model.sample(n=3, length=40, prompt="def ", seed=2)
    assert all(len(s) == 40 and set(s) <= set(TEXT) for s in a)
    many = model.sample(n=20, length=10, prompt="def ", seed=0)
    assert sum(s.startswith(("add(a, b)", "sub(a, b)")) for s in many) >= 15  # continues "def " as trained


def test_fit_on_a_list_keeps_texts_apart_and_errors():
    model = NgramModel(order=2).fit(["ab", "cd"])
    assert model.counts[1]["b"] == {}  # no bigram "bc" across the two texts
    with pytest.raises(ConfigError, match="order"):
        NgramModel(order=0)
    with pytest.raises(DataError, match="empty"):
        NgramModel(order=2).fit("")
    with pytest.raises(DataError, match="fit"):
        NgramModel(order=2).bits_per_char("abc")
