"""Export a causal LM for edge NPUs that run fp16/int8 only (Ascend Atlas 200I A2 / 310B: no bf16).

The path is fp32 checkpoint -> fp16 safetensors -> static-shape ONNX -> Ascend ATC ``.om``. Before converting,
:func:`export_for_edge` runs calibration prompts through the fp32 model and records the largest absolute activation
of every module, so that activations that would overflow fp16 (max 65504) are found on the host rather than as NaNs
on the device. It then compares fp16 and fp32 outputs, saves the fp16 model, exports a static-shape ONNX graph
(``input_ids`` and ``attention_mask`` of shape ``[batch_size, seq_len]`` -> ``logits``, no KV cache), checks it in
onnxruntime, and writes ``export_report.json`` with the ATC command to run next.

Activations are captured with forward hooks, so what happens inside a module's forward without a submodule (the
attention scores inside ``scaled_dot_product_attention``, the residual additions) is seen only through the outputs of
the modules that contain it (the decoder layers, whose output is the residual stream).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from .devices import FP16_MAX

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_PROMPTS = [
    "Question: what is 12 + 7? Let us think step by step.",
    "The quick brown fox jumps over the lazy dog.",
    "What is 345 + 678? Answer:",
    "Explain in one sentence why the sky is blue.",
    "1 2 3 4 5 6 7 8 9 10 11 12",
]
REPORT_NAME = "export_report.json"
ONNX_NAME = "model.onnx"
INSTALL_HINT = "pip install trl-edge[export]"


class FP16OverflowWarning(UserWarning):
    """An activation is close to (or past) the largest finite fp16 value."""


@dataclass
class ActivationStat:
    module: str
    type: str
    leaf: bool
    max_abs: float
    ratio_to_fp16_max: float
    status: str  # "ok", "warning" (above FP16_MAX / safety_margin) or "unsafe" (above FP16_MAX)


@dataclass
class ExportReport:
    output_dir: str
    seq_len: int
    batch_size: int
    num_calibration_prompts: int
    fp16_max: float = FP16_MAX
    safety_margin: float = 8.0
    activations: list[ActivationStat] = field(default_factory=list)  # top offenders, largest first
    max_activation: float = 0.0
    weights_max_abs: float = 0.0
    fp16_safe: bool = True
    unsafe_modules: list[str] = field(default_factory=list)
    warning_modules: list[str] = field(default_factory=list)
    fp16_metrics: dict[str, Any] = field(default_factory=dict)
    onnx: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    atc_command: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    def summary(self, top: int = 10) -> str:
        lines = [f"Export to {self.output_dir} (static shape: batch {self.batch_size} x seq_len {self.seq_len})"]
        verdict = "SAFE" if self.fp16_safe else "UNSAFE"
        lines.append(
            f"Activations vs the fp16 range ({self.fp16_max:g}), {self.num_calibration_prompts} calibration prompts: "
            f"{verdict}, max |activation| {self.max_activation:.4g}, max |weight| {self.weights_max_abs:.4g}"
        )
        for stat in self.activations[:top]:
            lines.append(
                f"  {stat.status:>7}  {stat.max_abs:>12.4g}  {stat.ratio_to_fp16_max:>9.2e} x fp16 max  "
                f"{stat.module} ({stat.type})"
            )
        m = self.fp16_metrics
        if m:
            lines.append(
                f"fp16 vs fp32 ({m.get('mode')}): max |logit diff| {_fmt(m.get('max_abs_logit_diff'))}, "
                f"mean KL {_fmt(m.get('mean_kl'))}, top-1 agreement {_fmt(m.get('top1_agreement'))}, "
                f"non-finite fp16 logits {m.get('nonfinite_fp16_logits')}"
            )
        if self.onnx:
            o = self.onnx
            lines.append(
                f"ONNX ({o.get('dtype')}, opset {o.get('opset')}, exporter {o.get('exporter')}): "
                f"onnxruntime max |logit diff| vs PyTorch {_fmt(o.get('ort_max_abs_diff'))}"
            )
        lines.append("Files:")
        lines.extend(f"  {f}" for f in self.files)
        for note in self.notes:
            lines.append(f"Note: {note}")
        if self.atc_command:
            lines.append("Next, on a host with CANN (ATC):")
            lines.append(f"  {self.atc_command}")
        return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _finite(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _require_onnx_deps():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:  # also raised for sys.modules[name] = None
        raise ImportError(
            f"ONNX export needs the optional dependencies onnx and onnxruntime ({exc}). Install them with "
            f"`{INSTALL_HINT}`, or pass onnx=False (CLI: --no_onnx) to save only the fp16 safetensors."
        ) from exc


def _first_tensor(output):
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):  # ModelOutput
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _tokenize(tokenizer, prompts, max_length):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(list(prompts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)


def _collect_activations(model, batches) -> tuple[dict[str, float], list[Any]]:
    """Run the fp32 model with a forward hook on every module; return max |output| per module and the logits."""
    import torch

    maxima: dict[str, float] = {}
    handles = []

    def make_hook(name):
        def hook(module, inputs, output):
            tensor = _first_tensor(output)
            if tensor is None or not tensor.is_floating_point() or tensor.numel() == 0:
                return
            value = tensor.detach().abs().max().item()
            if math.isnan(value) or value > maxima.get(name, -1.0):
                maxima[name] = value

        return hook

    for name, module in model.named_modules():
        if name:  # the root's output is the logits, seen through lm_head
            handles.append(module.register_forward_hook(make_hook(name)))
    logits = []
    try:
        with torch.no_grad():
            for batch in batches:
                logits.append(model(**batch, use_cache=False).logits.float())
    finally:
        for handle in handles:
            handle.remove()
    return maxima, logits


def _compare(ref_logits, test_logits, batches) -> dict[str, Any]:
    import torch

    max_diff, kl_sum, agree, count, nonfinite = 0.0, 0.0, 0, 0, 0
    for ref, test, batch in zip(ref_logits, test_logits, batches):
        mask = batch["attention_mask"].bool()
        ref, test = ref[mask].float(), test[mask].float()  # [valid positions, vocab]
        nonfinite += int((~torch.isfinite(test)).sum())
        max_diff = max(max_diff, (ref - test).abs().max().item())
        log_p = torch.log_softmax(ref, dim=-1)
        log_q = torch.log_softmax(test, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        kl_sum += kl.sum().item()
        agree += int((ref.argmax(-1) == test.argmax(-1)).sum())
        count += ref.shape[0]
    return {
        "max_abs_logit_diff": max_diff,
        "mean_kl": kl_sum / max(count, 1),
        "top1_agreement": agree / max(count, 1),
        "positions": count,
        "nonfinite_fp16_logits": nonfinite,
    }


def _fp16_logits(model, batches) -> tuple[list[Any], str]:
    """Forward in fp16 on the model's device; if fp16 kernels are missing there, emulate with fp16-rounded weights."""
    import torch

    model.half()
    try:
        with torch.no_grad():
            return [model(**b, use_cache=False).logits.float() for b in batches], "native-fp16"
    except (RuntimeError, NotImplementedError) as exc:
        logger.warning("fp16 forward failed (%s); emulating with fp16-rounded weights in fp32.", exc)
        model.float()  # the weights are fp16-rounded now: this is the emulation
        with torch.no_grad():
            logits = [model(**b, use_cache=False).logits.float() for b in batches]
        model.half()
        return logits, "emulated (fp16-rounded weights, fp32 compute)"


def _wrap(model):
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return LogitsOnly(model).eval()


def _export_onnx(model, example, path, opset) -> str:
    """Legacy TorchScript exporter (static shapes, exact opset); the dynamo exporter if that fails."""
    import torch

    wrapper = _wrap(model)
    kwargs = dict(input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=opset)
    args = (example["input_ids"], example["attention_mask"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, args, path, dynamo=False, do_constant_folding=True, **kwargs)
        return "torchscript"
    except Exception as exc:  # noqa: BLE001 - fall back to the other exporter, whatever broke
        logger.warning("Legacy ONNX export failed (%s: %s); trying the dynamo exporter.", type(exc).__name__, exc)
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"The dynamo ONNX exporter needs onnxscript: `{INSTALL_HINT}`.") from exc
    torch.onnx.export(wrapper, args, path, dynamo=True, external_data=True, **kwargs)
    return "dynamo"


def _run_onnxruntime(path, example):
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: example[i.name].cpu().numpy().astype(np.int64) for i in session.get_inputs()}
    shapes = {i.name: list(i.shape) for i in session.get_inputs()}
    return session.run(["logits"], feeds)[0], shapes


def atc_command(onnx_name: str, output_name: str, batch_size: int, seq_len: int, soc_version: str) -> str:
    shape = f"input_ids:{batch_size},{seq_len};attention_mask:{batch_size},{seq_len}"
    return (
        f"atc --model={onnx_name} --framework=5 --output={output_name} --soc_version={soc_version} "
        f'--input_shape="{shape}"'
    )


def export_for_edge(
    model_or_path,
    output_dir: str,
    *,
    tokenizer=None,
    seq_len: int = 128,
    batch_size: int = 1,
    calibration_prompts: list[str] | None = None,
    opset: int = 17,
    onnx: bool = True,
    onnx_dtype: str = "float32",
    safety_margin: float = 8.0,
    top_k: int = 20,
    soc_version: str = "Ascend310B1",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ExportReport:
    """Check fp16 safety, save fp16 safetensors and a static-shape ONNX graph, and write ``export_report.json``.

    ``model_or_path`` is a path (or hub id) loaded in fp32 on the CPU (``revision``, ``trust_remote_code`` for models
    with their own modelling code), or a model (copied, then moved to CPU fp32: the caller's model is left as it
    is). ``tokenizer`` defaults to the one saved with the model. Activations above ``FP16_MAX / safety_margin`` warn,
    above ``FP16_MAX`` are unsafe; both emit a :class:`FP16OverflowWarning`. The ONNX graph is fp32 by default
    (``onnx_dtype="float16"`` for an fp16 graph): ATC converts to fp16 itself. ``onnx=False`` skips the ONNX step
    and its optional dependencies.
    """
    import torch

    from .compat import config_name_or_path
    from .model_loading import load_causal_lm, load_tokenizer

    if onnx:
        _require_onnx_deps()  # fail before the slow part
    if onnx_dtype not in ("float32", "float16"):
        raise ValueError(f"onnx_dtype must be 'float32' or 'float16', not {onnx_dtype!r}.")
    os.makedirs(output_dir, exist_ok=True)

    if isinstance(model_or_path, (str, os.PathLike)):
        loading = dict(revision=revision, trust_remote_code=trust_remote_code)
        model = load_causal_lm(model_or_path, dtype=torch.float32, **loading)
        if tokenizer is None:
            tokenizer = load_tokenizer(model_or_path, **loading)
    else:
        model = copy.deepcopy(model_or_path).to("cpu", torch.float32)
        if tokenizer is None:
            path = config_name_or_path(model.config)
            if not path:
                raise ValueError("Pass tokenizer= with a model object that has no _name_or_path to load one from.")
            tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model.eval()

    prompts = list(calibration_prompts or DEFAULT_CALIBRATION_PROMPTS)
    batches = [
        dict(_tokenize(tokenizer, prompts[i : i + batch_size], seq_len)) for i in range(0, len(prompts), batch_size)
    ]
    batches = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in batches]
    report = ExportReport(
        output_dir=str(output_dir),
        seq_len=seq_len,
        batch_size=batch_size,
        num_calibration_prompts=len(prompts),
        safety_margin=safety_margin,
    )

    # 1. activation magnitudes in fp32
    maxima, ref_logits = _collect_activations(model, batches)
    leaves = {name for name, module in model.named_modules() if name and not list(module.children())}
    types = {name: type(module).__name__ for name, module in model.named_modules()}
    warn_at = FP16_MAX / safety_margin
    stats = []
    for name, value in maxima.items():
        status = "unsafe" if (math.isnan(value) or value > FP16_MAX) else "warning" if value > warn_at else "ok"
        stats.append(ActivationStat(name, types[name], name in leaves, value, value / FP16_MAX, status))
    stats.sort(key=lambda s: (not math.isnan(s.max_abs), s.max_abs), reverse=True)
    report.activations = stats[:top_k]
    report.max_activation = max((s.max_abs for s in stats), default=0.0)
    report.unsafe_modules = [s.module for s in stats if s.status == "unsafe"]
    report.warning_modules = [s.module for s in stats if s.status == "warning"]
    report.weights_max_abs = max((p.detach().abs().max().item() for p in model.parameters()), default=0.0)
    if report.weights_max_abs > FP16_MAX:
        report.notes.append(f"Some weights exceed the fp16 range ({report.weights_max_abs:.4g}): they become inf.")
    report.fp16_safe = not report.unsafe_modules and report.weights_max_abs <= FP16_MAX
    if report.unsafe_modules:
        message = (
            f"{len(report.unsafe_modules)} module(s) have activations beyond the fp16 range ({FP16_MAX:g}), e.g. "
            f"{', '.join(report.unsafe_modules[:5])} (max {report.max_activation:.4g}): fp16 inference will overflow."
        )
        warnings.warn(message, FP16OverflowWarning, stacklevel=2)
        logger.warning(message)
    elif report.warning_modules:
        message = (
            f"{len(report.warning_modules)} module(s) have activations above 1/{safety_margin:g} of the fp16 range, "
            f"e.g. {', '.join(report.warning_modules[:5])} (max {report.max_activation:.4g}): little headroom."
        )
        warnings.warn(message, FP16OverflowWarning, stacklevel=2)
        logger.warning(message)

    # 2. static-shape ONNX (fp32 by default), checked in onnxruntime
    example = dict(
        tokenizer(
            [prompts[i % len(prompts)] for i in range(batch_size)],
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=seq_len,
        )
    )
    example = {"input_ids": example["input_ids"].long(), "attention_mask": example["attention_mask"].long()}
    onnx_path = os.path.join(output_dir, ONNX_NAME)
    if onnx and onnx_dtype == "float32":
        report.onnx = _onnx_step(model, example, onnx_path, opset, "float32")

    # 3. fp16 vs fp32, then save the fp16 model
    fp16_logits, mode = _fp16_logits(model, batches)
    report.fp16_metrics = {"mode": mode, **_compare(ref_logits, fp16_logits, batches)}
    if onnx and onnx_dtype == "float16":
        report.onnx = _onnx_step(model, example, onnx_path, opset, "float16")
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)

    if onnx:
        report.atc_command = atc_command(ONNX_NAME, "model", batch_size, seq_len, soc_version)
        report.notes.append(
            f"model.onnx is {onnx_dtype}, static shapes, no KV cache. ATC casts fp32 graphs to fp16 by default "
            "(--precision_mode); the Ascend 310B has no bf16. Run the ATC command in this directory."
        )
    if mode.startswith("emulated"):
        report.notes.append("fp16 was emulated on this host (fp16-rounded weights, fp32 compute).")
    report.files = sorted(os.path.join(output_dir, f) for f in os.listdir(output_dir) if f != REPORT_NAME) + [
        os.path.join(output_dir, REPORT_NAME)
    ]
    with open(os.path.join(output_dir, REPORT_NAME), "w") as fh:
        json.dump(report.to_dict(), fh, indent=2)
    return report


def _onnx_step(model, example, path, opset, dtype) -> dict[str, Any]:
    import torch

    exporter = _export_onnx(model, example, path, opset)
    with torch.no_grad():
        ref = _wrap(model)(**example).float().numpy()
    ort_logits, shapes = _run_onnxruntime(path, example)
    diff = float(abs(ort_logits.astype("float32") - ref).max())
    info = {"path": path, "dtype": dtype, "opset": opset, "exporter": exporter, "input_shapes": shapes}
    info["ort_max_abs_diff"] = diff
    if not diff <= (1e-3 if dtype == "float32" else 5e-2) * max(1.0, float(abs(ref).max())):
        warnings.warn(f"onnxruntime logits differ from PyTorch's by {diff:.4g}.", stacklevel=3)
    return info
