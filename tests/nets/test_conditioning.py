from __future__ import annotations

import torch

from genlab.nets.conditioning import LabelEmbedding


def test_null_label_and_label_dropout() -> None:
    torch.manual_seed(0)
    embed = LabelEmbedding(num_classes=10, dim=6, drop_prob=0.5)
    labels = torch.arange(10).repeat(100)
    null = embed.table.weight[embed.null_label]
    embed.train()
    out = embed(labels)
    dropped = (out == null).all(dim=1).float().mean()
    assert 0.4 < dropped < 0.6
    embed.eval()
    assert not (embed(labels) == null).all(dim=1).any()  # no dropout outside training
    torch.testing.assert_close(embed(embed.null(3)), null.expand(3, -1))
