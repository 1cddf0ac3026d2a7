# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from .cpu_memory import keep_freed_cpu_memory
from .options import check_flags, check_numbers, check_output_dirs

__all__ = ["check_flags", "check_numbers", "check_output_dirs", "keep_freed_cpu_memory"]
