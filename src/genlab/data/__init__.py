"""LightningDataModules, one per data source."""

from genlab.data.captioned_digits import CaptionedDigitsDataModule
from genlab.data.digits import DigitsDataModule
from genlab.data.image_folder import ImageFolderDataModule
from genlab.data.mnist import MNISTDataModule
from genlab.data.mnist5k import Mnist5kDataModule

__all__ = [
    "CaptionedDigitsDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "Mnist5kDataModule",
]
