"""``trl-edge make-student --teacher T --num_layers N --output_dir DIR``: a depth-pruned student of a teacher."""

from __future__ import annotations

import sys
from argparse import ArgumentParser

from ..model_loading import DTYPE_NAMES


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="trl-edge make-student",
        allow_abbrev=False,
        description=(
            "Make a student from a teacher by depth pruning: keep N evenly spaced decoder layers (first and last "
            "included) with the teacher's embeddings, final norm, LM head and tokenizer, and save it with "
            "student_provenance.json."
        ),
    )
    parser.add_argument(
        "--teacher", required=True, help="Teacher checkpoint directory, hub id, or embedded:smollm2-135m-instruct"
    )
    parser.add_argument("--num_layers", type=int, required=True, help="Decoder layers the student keeps")
    parser.add_argument("--output_dir", required=True, help="Where the student (model, tokenizer, provenance) goes")
    parser.add_argument("--revision", help="Teacher revision (branch, tag or commit)")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="auto",
        help="Weights dtype to load and save: auto (bf16 on an accelerator that has it, else fp32), ...",
    )
    parser.add_argument("--trust_remote_code", action="store_true", help="Run the teacher's own modelling code")
    parser.add_argument("--attn_implementation", help="Attention kernel to load the teacher with (eager, sdpa, ...)")
    return parser


def make_student_command(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import json
    from pathlib import Path

    from ..student import PROVENANCE_FILE, make_student

    try:
        output_dir = make_student(
            args.teacher,
            args.num_layers,
            args.output_dir,
            revision=args.revision,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
            attn_implementation=args.attn_implementation,
        )
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    info = json.loads((Path(output_dir) / PROVENANCE_FILE).read_text())
    print(
        f"Kept layers {info['kept_layers']} of the teacher's {info['teacher_num_layers']} "
        f"({info['teacher_parameters']:,} -> {info['student_parameters']:,} parameters)."
    )
    print(f"Student saved to {output_dir}")
    return 0
