"""Datasets in their distributed formats (``data.datasets``). The names are here, without PyTorch,
so the command line can offer them before anything heavy is imported."""

DATASET_NAMES = ("fashion-mnist", "fashion-mnist-mini", "cifar10", "cifar100", "tiny-imagenet")
DEFAULT_DATASET = "fashion-mnist-mini"  # embedded in the package: works offline
