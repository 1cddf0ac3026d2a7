# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from .blocks import *  # noqa: F401,F403
from .nets import SACBNet, SACBNetDDF
