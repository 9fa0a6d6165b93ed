"""Run a trl_edge training script under ``accelerate launch``, as ``trl sft`` does for TRL's scripts.

Flags the script does not know (``--num_processes``, ``--config_file``, ``--accelerate_config PATH``) go to
``accelerate launch``; the rest (``--config recipe.yaml`` and every config flag) go to the script.
"""

from __future__ import annotations

import importlib
from pathlib import Path


def _subtract_subsequence(items: list[str], subsequence: list[str]) -> list[str]:
    """``items`` without the ordered ``subsequence`` (the launcher's flags, which argparse left over)."""
    rest, it = [], iter(subsequence)
    current = next(it, None)
    for item in items:
        if current is not None and item == current:
            current = next(it, None)
        else:
            rest.append(item)
    return rest


def _resolve_accelerate_config(launch_args: list[str]) -> list[str]:
    if "--accelerate_config" not in launch_args:
        return launch_args
    i = launch_args.index("--accelerate_config")
    if i + 1 >= len(launch_args):
        raise SystemExit("trl-edge: expected a path after --accelerate_config")
    path = launch_args[i + 1]
    if not Path(path).is_file():
        raise SystemExit(f"trl-edge: accelerate config {path!r} is not a file (see recipes/accelerate/ for examples)")
    return ["--config_file", path] + launch_args[:i] + launch_args[i + 2 :]


def launch_script(name: str, argv: list[str], prog: str) -> int:
    """Parse ``argv`` with the script's parser (so ``--help`` and bad flags fail here), then launch the script."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    module = importlib.import_module(f"trl_edge.scripts.{name}")
    parser = module.make_parser(prog=prog)
    *_, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    launch_args = _resolve_accelerate_config(config_remaining + cli_remaining)
    script_args = _subtract_subsequence(argv, cli_remaining)
    accelerate_args = launch_command_parser().parse_args(launch_args + [module.__file__] + script_args)
    launch_command(accelerate_args)
    return 0
