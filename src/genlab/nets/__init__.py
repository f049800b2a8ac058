"""Plain `nn.Module`s: no training logic, no Lightning."""

from genlab.nets.classifier import ConvClassifier
from genlab.nets.conv import ConvDecoder, ConvEncoder

__all__ = ["ConvClassifier", "ConvDecoder", "ConvEncoder"]
