# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest

from monai_sacb.utils import check_flags


def test_booleans_pass():
    assert check_flags(amp=False, resume=True) is None
    assert check_flags() is None


@pytest.mark.parametrize("value", ["false", "False", "true", 0, 1, None])
def test_anything_else_is_refused_with_its_name_value_and_the_fix(value):
    with pytest.raises(ValueError) as info:
        check_flags(amp=False, deterministic=value)
    message = str(info.value)
    assert f"--deterministic {value!r} ({type(value).__name__})" in message
    assert "--amp" not in message.split(":")[0]  # only the wrong one is named
    assert "this option takes True or False" in message and "capital letter" in message


def test_every_wrong_option_is_named_at_once():
    with pytest.raises(ValueError, match=r"--amp 'false' \(str\), --resume 'no' \(str\): these options take"):
        check_flags(amp="false", progress_bar=True, resume="no")
