from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from genlab.apps.common import auroc, parse_options, spread
from genlab.errors import ConfigError
from genlab.metrics import train_classifier
from genlab.nets.classifier import ConvClassifier


def test_auroc_equals_a_hand_count_and_sklearn() -> None:
    positive, negative = torch.tensor([0.8, 0.35, 0.35]), torch.tensor([0.1, 0.4, 0.35])
    # Pairs won by the positive: 0.8 beats all 3; each 0.35 beats 0.1, loses to 0.4, ties 0.35 (half): 1.5.
    hand = (3 + 1.5 + 1.5) / 9
    assert auroc(positive, negative) == pytest.approx(hand)
    assert auroc(positive, negative) == pytest.approx(
        roc_auc_score([1, 1, 1, 0, 0, 0], [0.8, 0.35, 0.35, 0.1, 0.4, 0.35])
    )
    assert auroc(negative, positive) == pytest.approx(1 - hand)
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0


def test_auroc_is_within_zero_and_one_and_near_half_for_one_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    value = auroc(torch.randn(2000, generator=g), torch.randn(2000, generator=g))
    assert 0.45 < value < 0.55


def test_parse_options_types_values_keeps_overrides_and_paths_with_equals(tmp_path) -> None:
    ckpt = tmp_path / "best-epoch=003-step=40.ckpt"
    ckpt.write_bytes(b"")
    options = {"run": (str, ""), "n": (int, "")}
    args, rest = parse_options([str(ckpt), "n=5", "trainer.max_epochs=2"], options, "x", overrides=True)
    assert args == {"run": str(ckpt), "n": 5} and rest == ["trainer.max_epochs=2"]
    with pytest.raises(ConfigError, match="unknown option 'm'"):
        parse_options(["m=1"], options, "x")
    with pytest.raises(ConfigError, match="n: expected int"):
        parse_options(["n=many"], options, "x")
    with pytest.raises(ConfigError, match="unknown option 'trainer.max_epochs'"):
        parse_options(["trainer.max_epochs=2"], options, "x")  # no overrides for this command


def test_spread() -> None:
    s = spread([0.5, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1414, abs=1e-4)
    assert spread([0.3])["std"] == 0.0


def test_train_classifier_steps_default_is_the_recipe_and_seed_matters() -> None:
    """The FID features' classifier is unchanged by the steps/seed options (its cache stays valid)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 3, (64,), generator=g)

    def trained(**kwargs) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = ConvClassifier(1, 3, 8, (8, 8), 8)
        train_classifier(net, x, y, **kwargs)
        return net.state_dict()

    default, explicit, other_seed = trained(), trained(steps=30, seed=0), trained(steps=30, seed=1)
    assert all(torch.equal(default[k], explicit[k]) for k in default)  # 30 epochs of one batch of 64
    assert not all(torch.equal(default[k], other_seed[k]) for k in default)
