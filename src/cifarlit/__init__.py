"""cifarlit: train image classifiers well with PyTorch Lightning."""

__version__ = "0.1.0"
