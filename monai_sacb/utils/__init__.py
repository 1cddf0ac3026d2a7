# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from .cpu_memory import keep_freed_cpu_memory
from .flags import check_flags

__all__ = ["check_flags", "keep_freed_cpu_memory"]
