from __future__ import annotations

import pytest
import torch

from genlab.nets import ConvDecoder, ConvEncoder


@pytest.mark.parametrize(("size", "hidden"), [(8, [16, 32]), (28, [8, 16]), (32, [8, 8, 16])])
def test_encoder_decoder_shapes(size: int, hidden: list[int]) -> None:
    x = torch.randn(3, 2, size, size)
    features = ConvEncoder(2, size, hidden, out_features=10)(x)
    assert features.shape == (3, 10)
    assert ConvDecoder(10, 2, size, hidden)(features).shape == x.shape


def test_size_not_divisible_is_explained() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        ConvEncoder(1, 28, [8, 8, 8], out_features=4)
