"""Plain `nn.Module`s: no training logic, no Lightning."""

from genlab.nets.augment import DiffAugment
from genlab.nets.classifier import ConvClassifier
from genlab.nets.conv import ConvDecoder, ConvEncoder
from genlab.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from genlab.nets.dit import DiT
from genlab.nets.flow import Glow
from genlab.nets.mlp import MLPDecoder, MLPEncoder
from genlab.nets.unet import UNet

__all__ = [
    "ConvClassifier",
    "ConvDecoder",
    "ConvEncoder",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "DiT",
    "DiffAugment",
    "Glow",
    "MLPDecoder",
    "MLPEncoder",
    "UNet",
]
