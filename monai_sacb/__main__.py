# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""``python -m monai_sacb``: the ``monai-sacb`` command line (:py:mod:`monai_sacb.cli`)."""

import sys

from monai_sacb.cli import main

sys.exit(main())
