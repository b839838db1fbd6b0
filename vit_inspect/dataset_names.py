"""The datasets that training knows by name; no torch here.

The command line checks ``--dataset`` against these names before torch is imported;
:mod:`vit_inspect.training` loads them (anything else must be a folder of class
sub-folders).
"""
from __future__ import annotations

DIGITS = "digits"
TORCHVISION_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
DATASETS = (DIGITS, *TORCHVISION_DATASETS)  # or a folder of class sub-folders
