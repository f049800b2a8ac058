import pytest
import torch

from genlab.nets import MLPDecoder, MLPEncoder


@pytest.mark.parametrize(("channels", "size", "hidden"), [(1, 8, [32]), (3, 4, [16, 8])])
def test_encoder_and_decoder_shapes(channels: int, size: int, hidden: list[int]) -> None:
    x = torch.randn(5, channels, size, size)
    features = MLPEncoder(channels, size, hidden, out_features=6)(x)
    assert features.shape == (5, 6)
    assert MLPDecoder(6, channels, size, hidden)(features).shape == x.shape


def test_decoder_mirrors_the_encoder_widths() -> None:
    encoder, decoder = MLPEncoder(1, 8, [64, 32], 4), MLPDecoder(4, 1, 8, [64, 32])
    assert [m.out_features for m in encoder.modules() if isinstance(m, torch.nn.Linear)] == [64, 32, 4]
    assert [m.out_features for m in decoder.modules() if isinstance(m, torch.nn.Linear)] == [32, 64, 64]


def test_no_hidden_layer_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="hidden_features"):
        MLPEncoder(1, 8, [], 4)
