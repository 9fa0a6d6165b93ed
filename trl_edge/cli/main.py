"""``trl-edge``: the console script.

trl-edge sft --config recipe.yaml [--flag value ...]     curriculum SFT, under accelerate launch
trl-edge rollout --config recipe.yaml                     the student samples a prompt set, under accelerate launch
trl-edge teacher-answers --config recipe.yaml             the teacher writes SFT answers, under accelerate launch
trl-edge pipeline --config pipeline.yaml                  the whole method, stage by stage, resumable, with a report
trl-edge cache --teacher T --dataset D --output_dir DIR   cache teacher logits, under accelerate launch
trl-edge cache verify DIR                                 check every shard and sample of a cache
trl-edge kd --config recipe.yaml                          distil from a teacher cache, under accelerate launch
trl-edge export MODEL --output_dir DIR                    fp16 check, fp16 safetensors, static ONNX for Ascend ATC
trl-edge eval --config eval.yaml                          fidelity, generation quality, lm-eval benchmarks, in-process
trl-edge make-student --teacher T --num_layers N --output_dir DIR   a depth-pruned student of a teacher
trl-edge env                                              versions, devices, variables
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser


def build_parser() -> ArgumentParser:
    from ..pipeline.stages import KINDS

    parser = ArgumentParser(prog="trl-edge", allow_abbrev=False, description="Post-train small LMs for edge devices.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for kind in KINDS.values():  # every stage kind is a subcommand
        subparsers.add_parser(kind.command, help=kind.help, add_help=False)
    subparsers.add_parser(
        "pipeline", help="The whole method as one resumable job, stage by stage, with a report", add_help=False
    )
    subparsers.add_parser("env", help="Print versions, devices and variables for bug reports")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..devices import shield_torch_npu

    shield_torch_npu()  # before anything imports torch or transformers
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
    if args.command == "export":
        from .export import export_command

        return export_command(argv[1:])
    if args.command == "pipeline":  # drives the stages, each in its own process
        from .pipeline import pipeline_command

        return pipeline_command(argv[1:])
    if args.command == "make-student":
        from .make_student import make_student_command

        return make_student_command(argv[1:])
    if args.command == "eval":  # in this process: one model, no accelerate launch
        from ..scripts.eval import run

        return run(argv[1:], prog="trl-edge eval")
    if args.command == "cache" and argv[1:2] == ["verify"]:
        from .verify import verify_cache

        return verify_cache(argv[2:])
    from ..pipeline.stages import KINDS
    from .launch import launch_script

    kind = KINDS[args.command.replace("-", "_")]  # a launched stage kind: the other commands returned above
    return launch_script(kind.script_module, argv[1:], prog=f"trl-edge {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
