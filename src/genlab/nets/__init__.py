"""Plain `nn.Module`s: no training logic, no Lightning."""

from genlab.nets.conv import ConvDecoder, ConvEncoder

__all__ = ["ConvDecoder", "ConvEncoder"]
