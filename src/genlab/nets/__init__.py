"""Plain `nn.Module`s: no training logic, no Lightning."""

from genlab.nets.augment import DiffAugment
from genlab.nets.conv import ConvDecoder, ConvEncoder
from genlab.nets.dcgan import DCGANDiscriminator, DCGANGenerator

__all__ = ["ConvDecoder", "ConvEncoder", "DCGANDiscriminator", "DCGANGenerator", "DiffAugment"]
