"""LightningDataModules, one per data source."""

from genlab.data.digits import DigitsDataModule
from genlab.data.image_folder import ImageFolderDataModule
from genlab.data.mnist import MNISTDataModule

__all__ = ["DigitsDataModule", "ImageFolderDataModule", "MNISTDataModule"]
