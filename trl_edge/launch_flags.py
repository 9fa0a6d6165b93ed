"""The ``accelerate launch`` flags of a process: accelerate's defaults said explicitly, and its CPU threads.

Shared by the ``trl-edge`` console script (``cli/launch.py``) and the pipeline's stages (``pipeline/stages.py``), so
that both launch a script the same way, and the library never imports the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

# What accelerate warns about ("were not passed to `accelerate launch` and had defaults used instead") when no
# config file is found: the same defaults, said explicitly.
LAUNCH_DEFAULTS = {"--num_processes": "1", "--num_machines": "1", "--mixed_precision": "no", "--dynamo_backend": "no"}


def cpu_threads_flag(config_file: str | os.PathLike | None, launch_args: list[str] = ()) -> list[str]:
    """``--num_cpu_threads_per_process`` as accelerate would pick it for a CPU config, said explicitly.

    On a CPU config without ``OMP_NUM_THREADS``, accelerate sets the threads to the physical cores per local process
    and warns that it did on every launch; passing its own choice keeps the behaviour and drops the warning.
    """
    if config_file is None or os.environ.get("OMP_NUM_THREADS") or "--num_cpu_threads_per_process" in launch_args:
        return []
    import psutil
    import yaml

    try:
        config = yaml.safe_load(Path(config_file).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []  # accelerate will say what is wrong with the file
    if not config.get("use_cpu"):
        return []
    local = max(int(config.get("num_processes", 1) or 1) // max(int(config.get("num_machines", 1) or 1), 1), 1)
    threads = int((psutil.cpu_count(logical=False) or 1) / local)
    return ["--num_cpu_threads_per_process", str(threads)] if threads > 1 else []


def launch_flags(config_file: str | os.PathLike | None) -> list[str]:
    """The ``accelerate launch`` flags of a stage: its config file (with the CPU threads said), else the defaults."""
    if config_file:
        return ["--config_file", str(config_file), *cpu_threads_flag(config_file)]
    return [x for flag_value in LAUNCH_DEFAULTS.items() for x in flag_value]
