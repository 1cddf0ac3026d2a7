# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math
import os

__all__ = ["check_flags", "check_numbers", "check_output_dirs"]


def check_flags(**flags: object) -> None:
    """
    Refuse bundle options that should be True or False but are not, naming each one and the fix.

    ``python -m monai.bundle run ... --amp False`` passes the boolean False, but ``--amp false`` (lower case, as
    in JSON) passes the string ``"false"``, which is truthy: the run would silently do the opposite of what was
    asked. The bundle's configs call this first in ``initialize`` with their True/False options.

    Args:
        flags: option name -> its parsed value.

    Raises:
        ValueError: one or more values are not booleans.
    """
    _refuse(
        {name: value for name, value in flags.items() if not isinstance(value, bool)},
        "True or False; on the command line write them with a capital letter (--amp False), in a JSON config as "
        "true or false without quotes.",
    )


def check_numbers(*, integer: bool = False, minimum: float = 0, allow_none: bool = False, **values: object) -> None:
    """
    Refuse numeric bundle options that are not finite numbers of at least ``minimum`` (whole numbers where
    ``integer``), naming each one and the fix, before they reach a component that would fail with a bare
    ``TypeError`` (``--learning_rate 1e-4x`` arrives as text) or with a misleading message (``--num_samples -1``
    leaves the training list empty).

    Args:
        integer: the options count something: int values only (True and False are not counts).
        minimum: the smallest value allowed.
        allow_none: None is a valid value (e.g. ``num_val_pairs``: all pairs).
        values: option name -> its parsed value.

    Raises:
        ValueError: one or more values are of the wrong type or below ``minimum``.
    """

    def fits(value: object) -> bool:
        if value is None:
            return allow_none
        numeric = isinstance(value, int) if integer else isinstance(value, (int, float))
        return not isinstance(value, bool) and numeric and math.isfinite(value) and value >= minimum

    kind = "a whole number" if integer else "a number"
    _refuse(
        {name: value for name, value in values.items() if not fits(value)},
        f"{kind} >= {minimum:g}" + (" or None." if allow_none else "."),
    )


def check_output_dirs(**dirs: object) -> None:
    """
    Refuse output folders that cannot be written, before anything runs: otherwise a run trains or registers and
    then fails while saving, with a stack trace from deep inside the saver. Nothing is created: a folder that does
    not exist yet passes if its nearest existing parent is a folder this process may write to.

    Args:
        dirs: option name -> the folder's path.

    Raises:
        ValueError: one or more paths are empty, not text, lie below a file, or are not writable.
    """
    wrong = {}
    for name, path in dirs.items():
        problem = _unwritable(path)
        if problem:
            wrong[name] = f"{path!r} ({problem})"
    if wrong:
        listed = "; ".join(f"--{name} {why}" for name, why in wrong.items())
        raise ValueError(f"{listed}: give a folder this process can create or write to.")


def _unwritable(path: object) -> str:
    """Why ``path`` cannot become a writable folder, or "" if it can."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        return "not a folder path"
    existing = os.path.abspath(os.fspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return ""


def _refuse(wrong: dict[str, object], takes: str) -> None:
    """A ValueError naming each wrong option with its value and type, and what the options take."""
    if wrong:
        listed = ", ".join(f"--{name} {value!r} ({type(value).__name__})" for name, value in wrong.items())
        raise ValueError(f"{listed}: {'these options take' if len(wrong) > 1 else 'this option takes'} {takes}")
