from __future__ import annotations

import torch
from torch import nn

from genlab.nets.ema import EMA


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))


def test_shadow_lags_the_online_weights_by_the_decay() -> None:
    net = _net()
    ema = EMA(net, decay=0.9)
    before = [p.clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for start, shadow, online in zip(before, ema.shadow.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(shadow, start + 0.1)  # 0.9 * start + 0.1 * (start + 1)
        assert not torch.equal(shadow, online)
        assert not shadow.requires_grad


def test_copies_until_start_step_then_averages() -> None:
    net = _net()
    ema = EMA(net, decay=0.99, start_step=2)
    for step in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        ema.update(net)
        first_shadow, first_online = next(ema.shadow.parameters()), next(net.parameters())
        assert torch.equal(first_shadow, first_online) == (step < 2)
    assert int(ema.num_updates) == 3


def test_state_dict_round_trip_is_exact_and_shadow_stays_in_eval_mode() -> None:
    net = _net()
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net[0].weight.mul_(3)
    ema.update(net)
    copy = EMA(_net(), decay=0.5)
    copy.load_state_dict(ema.state_dict())
    for a, b in zip(ema.state_dict().values(), copy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    copy.train()
    assert not copy.shadow.training  # no dropout when sampling from the average
    x = torch.randn(5, 4)
    torch.testing.assert_close(copy(x), ema(x))


def test_half_life_decay_halves_an_old_weight() -> None:
    decay = EMA.decay_for_half_life(100)
    assert abs(decay**100 - 0.5) < 1e-12
