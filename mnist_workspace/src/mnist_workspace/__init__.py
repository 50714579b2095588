"""MNIST workspace: load MNIST offline, train LeNet or stronger models, predict digits.

This module imports nothing heavy: `keras_offline.register()` runs at every Python
start-up through a `.pth` file, so the package root must stay cheap.
"""

__version__ = "0.1.0"
