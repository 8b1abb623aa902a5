"""Glimmer Edge: from a trained checkpoint to live camera inference on a drone's companion computer.

Subpackages, lowest layer first (imports only point down):
``runtime`` (no torch, Python 3.8) <- ``calibration`` <- ``export`` <- ``train``; ``models`` is torch only.
"""
__version__ = "0.1.0"
