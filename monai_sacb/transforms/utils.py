# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from collections.abc import Hashable

from monai.config import KeysCollection
from monai.utils import ensure_tuple

__all__ = ["matching_output_keys"]


def matching_output_keys(keys: tuple[Hashable, ...], output_keys: KeysCollection | None) -> tuple[Hashable, ...]:
    """
    The keys a dictionary transform writes its results to: ``output_keys`` (one per key of ``keys``, in order),
    or ``keys`` themselves when it is None (the results replace the inputs).

    Raises:
        ValueError: when ``output_keys`` does not have one entry per key.
    """
    resolved = ensure_tuple(output_keys) if output_keys is not None else keys
    if len(resolved) != len(keys):
        raise ValueError(f"output_keys {resolved} must have one entry per key {keys}.")
    return resolved
