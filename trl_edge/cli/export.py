"""``trl-edge export MODEL_PATH --output_dir DIR``: fp16 safetensors + static-shape ONNX for Ascend ATC."""

from __future__ import annotations

from argparse import ArgumentParser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="trl-edge export",
        allow_abbrev=False,
        description=(
            "Check activations against the fp16 range, save fp16 safetensors and a static-shape ONNX graph "
            "(input_ids, attention_mask -> logits, no KV cache) and print the Ascend ATC command to run next."
        ),
    )
    parser.add_argument("model_path", help="Checkpoint directory (or hub id) that from_pretrained loads")
    parser.add_argument("--output_dir", required=True, help="Where the fp16 model, model.onnx and the report go")
    parser.add_argument("--seq_len", type=int, default=128, help="Static sequence length of the ONNX graph")
    parser.add_argument("--batch_size", type=int, default=1, help="Static batch size of the ONNX graph")
    parser.add_argument("--no_onnx", action="store_true", help="Skip the ONNX export (no onnx/onnxruntime needed)")
    parser.add_argument("--onnx_dtype", choices=["float32", "float16"], default="float32", help="ONNX graph dtype")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--calibration_file", help="Text file with one calibration prompt per line")
    parser.add_argument("--soc_version", default="Ascend310B1", help="--soc_version of the ATC command")
    parser.add_argument("--safety_margin", type=float, default=8.0, help="Warn above fp16 max / this")
    parser.add_argument("--strict", action="store_true", help="Exit 1 when an activation overflows fp16")
    parser.add_argument("--revision", help="Model revision (branch, tag or commit)")
    parser.add_argument("--trust_remote_code", action="store_true", help="Run the model's own modelling code")
    return parser


def export_command(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prompts = None
    if args.calibration_file:
        with open(args.calibration_file, encoding="utf-8") as fh:
            prompts = [line.strip() for line in fh if line.strip()]
        if not prompts:
            print(f"No prompts in {args.calibration_file}.")
            return 2

    from ..export import export_for_edge

    try:
        report = export_for_edge(
            args.model_path,
            args.output_dir,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            calibration_prompts=prompts,
            opset=args.opset,
            onnx=not args.no_onnx,
            onnx_dtype=args.onnx_dtype,
            safety_margin=args.safety_margin,
            soc_version=args.soc_version,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
        )
    except ImportError as exc:
        print(f"error: {exc}")
        return 1
    print(report.summary())
    return 1 if args.strict and not report.fp16_safe else 0
