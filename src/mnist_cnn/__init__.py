"""mnist-cnn: handwritten-digit recognition with convolutional networks in PyTorch."""

__version__ = "0.1.0"
