"""SACB-Net as MONAI components."""

__version__ = "0.9.10"
