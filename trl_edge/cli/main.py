"""``trl-edge``: the console script. ``trl-edge sft --config recipe.yaml [--flag value ...]``, ``trl-edge env``."""

from __future__ import annotations

import sys
from argparse import ArgumentParser

SCRIPTS = {"sft": "Curriculum SFT (CurriculumSFTTrainer), launched with accelerate"}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="trl-edge", allow_abbrev=False, description="Post-train small LMs for edge devices.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SCRIPTS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    subparsers.add_parser("env", help="Print versions, devices and variables for bug reports")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, _ = parser.parse_known_args(argv[:1])
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "env":
        from .env import print_env

        print_env()
        return 0
    from .launch import launch_script

    return launch_script(args.command, argv[1:], prog=f"trl-edge {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
