# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

__all__ = ["check_flags"]


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
    wrong = {name: value for name, value in flags.items() if not isinstance(value, bool)}
    if wrong:
        listed = ", ".join(f"--{name} {value!r} ({type(value).__name__})" for name, value in wrong.items())
        raise ValueError(
            f"{listed}: {'these options take' if len(wrong) > 1 else 'this option takes'} True or False; on the "
            "command line write them with a capital letter (--amp False), in a JSON config as true or false "
            "without quotes."
        )
