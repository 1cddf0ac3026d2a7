"""SACB-Net as MONAI components."""

__version__ = "0.8.0"
