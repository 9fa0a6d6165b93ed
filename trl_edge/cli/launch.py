"""Run a trl_edge training script under ``accelerate launch``, as ``trl sft`` does for TRL's scripts.

Flags the script does not know (``--num_processes``, ``--config_file``, ``--accelerate_config PATH``) go to
``accelerate launch``; the rest (``--config recipe.yaml`` and every config flag) go to the script.
"""

from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path

from ..launch_flags import LAUNCH_DEFAULTS, cpu_threads_flag


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


def _check_launch_flags(launch_args: list[str], script_parser, launch_parser, prog: str) -> None:
    """Every flag the script does not know must be one of accelerate's: otherwise say so in one line, not in
    accelerate's 100-line usage."""
    known = set(launch_parser._option_string_actions) | {"--accelerate_config"}
    for arg in launch_args:
        if not arg.startswith("-"):
            continue
        flag = arg.split("=", 1)[0]
        if flag not in known:
            choices = [s for s in script_parser._option_string_actions if s.startswith("--")] + sorted(known)
            close = difflib.get_close_matches(flag, choices, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; see `{prog} --help`."
            raise SystemExit(f"{prog}: error: unknown argument {flag}{hint}")


def _default_config_exists() -> bool:
    from accelerate.commands.config import default_config_file

    return os.path.isfile(default_config_file)


def _explicit_defaults(launch_args: list[str]) -> list[str]:
    """accelerate's defaults, passed explicitly when no config file gives them (so it does not warn)."""
    if "--config_file" in launch_args or _default_config_exists():
        return launch_args
    given = {a.split("=", 1)[0] for a in launch_args if a.startswith("--")}
    extra = [x for flag, value in LAUNCH_DEFAULTS.items() if flag not in given for x in (flag, value)]
    return extra + launch_args


def launch_script(module_name: str, argv: list[str], prog: str) -> int:
    """Parse ``argv`` with the script's parser (so ``--help`` and bad flags fail here), then launch the script."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    module = importlib.import_module(module_name)
    parser = module.make_parser(prog=prog)
    try:
        *_, config_remaining, cli_remaining = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as err:  # a config that fails its own checks: the user's mistake, said in one line
        raise SystemExit(f"{prog}: error: {err}") from None
    launch_parser = launch_command_parser()
    _check_launch_flags(config_remaining + cli_remaining, parser, launch_parser, prog)
    launch_args = _explicit_defaults(_resolve_accelerate_config(config_remaining + cli_remaining))
    if "--config_file" in launch_args:
        launch_args += cpu_threads_flag(launch_args[launch_args.index("--config_file") + 1], launch_args)
    script_args = _subtract_subsequence(argv, cli_remaining)
    accelerate_args = launch_parser.parse_args(launch_args + [module.__file__] + script_args)
    launch_command(accelerate_args)
    return 0
