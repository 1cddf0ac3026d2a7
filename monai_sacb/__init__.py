"""SACB-Net as MONAI components."""

__version__ = "0.4.0"
