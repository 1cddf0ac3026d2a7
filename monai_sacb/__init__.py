"""SACB-Net as MONAI components."""

__version__ = "0.5.1"
