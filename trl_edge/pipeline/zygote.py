"""What the warm-start zygote (``pipeline/warm.py``) imports once, so that each stage forked from it starts warm.

Imports only: no torch op runs here, so no OpenMP or tokenizers thread pool exists when the zygote forks.
"""

from ..devices import shield_torch_npu

shield_torch_npu()  # before anything imports torch or transformers, as the console script does

import accelerate.commands.launch  # noqa: E402, F401
import datasets  # noqa: E402, F401
import torch  # noqa: E402, F401
import transformers  # noqa: E402, F401
import trl  # noqa: E402, F401

from .stages import KINDS  # noqa: E402

for _kind in KINDS.values():
    if _kind.script_module:
        __import__(_kind.script_module)
