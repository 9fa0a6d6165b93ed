"""trl_edge.export: fp16 safety report, fp16 safetensors, static-shape ONNX checked in onnxruntime, the CLI."""

import json
import os
import sys

import pytest
import torch

from trl_edge.testing import build_tiny_model, build_tokenizer, save_tiny_checkpoint

SEQ_LEN = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from trl_edge.export import export_for_edge

    ckpt = save_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt")), hidden_size=32)
    out = str(tmp_path_factory.mktemp("export"))
    report = export_for_edge(ckpt, out, seq_len=SEQ_LEN, batch_size=2)
    return ckpt, out, report


def test_onnx_matches_pytorch_fp32(exported):
    import onnxruntime as ort
    from transformers import AutoModelForCausalLM

    ckpt, out, report = exported
    session = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    assert {i.name: list(i.shape) for i in session.get_inputs()} == {
        "input_ids": [2, SEQ_LEN],
        "attention_mask": [2, SEQ_LEN],
    }  # static shapes, no dynamic axes
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (2, SEQ_LEN), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -5:] = 0  # right padding, as the tokenizer pads
    (onnx_logits,) = session.run(
        ["logits"], {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    )
    with torch.no_grad():
        ref = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    assert onnx_logits.dtype.name == "float32"
    assert abs(onnx_logits - ref.numpy()).max() < 1e-4
    assert report.onnx["ort_max_abs_diff"] < 1e-4


def test_fp16_safetensors_and_report(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out, report = exported
    assert os.path.exists(os.path.join(out, "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert AutoTokenizer.from_pretrained(out) is not None

    data = json.load(open(os.path.join(out, "export_report.json")))
    assert data["fp16_safe"] is True and not data["unsafe_modules"]
    table = data["activations"]
    assert table and {"module", "type", "max_abs", "ratio_to_fp16_max", "status"} <= set(table[0])
    assert table[0]["max_abs"] == max(row["max_abs"] for row in table)
    assert any(row["module"].endswith("mlp.down_proj") for row in table) or len(table) == 20
    metrics = data["fp16_metrics"]
    assert metrics["mode"] in ("native-fp16", "emulated (fp16-rounded weights, fp32 compute)")
    assert metrics["top1_agreement"] > 0.9 and metrics["mean_kl"] < 1e-3 and metrics["max_abs_logit_diff"] < 0.1
    assert metrics["nonfinite_fp16_logits"] == 0
    assert os.path.join(out, "model.onnx") in data["files"]
    assert 'input_shape="input_ids:2,16;attention_mask:2,16"' in data["atc_command"]
    assert "--framework=5" in data["atc_command"]


def test_huge_activation_is_unsafe_and_warns(tmp_path):
    from trl_edge.export import FP16OverflowWarning, export_for_edge

    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1e6)
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    with pytest.warns(FP16OverflowWarning, match="beyond the fp16 range"):
        report = export_for_edge(model, str(tmp_path), tokenizer=tokenizer, seq_len=SEQ_LEN, onnx=False)
    assert not report.fp16_safe
    assert "model.layers.0.mlp.up_proj" in report.unsafe_modules
    top = report.activations[0]
    assert top.status == "unsafe" and top.max_abs > 65504 and top.ratio_to_fp16_max > 1
    assert not os.path.exists(tmp_path / "model.onnx")
    data = json.load(open(tmp_path / "export_report.json"))  # strict JSON: inf/NaN written as null
    assert data["fp16_safe"] is False
    # the caller's model is left in fp32, untouched
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before)


def test_missing_onnx_dependency_raises(tmp_path, monkeypatch):
    from trl_edge.export import export_for_edge

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install trl-edge\[export\]"):
        export_for_edge(str(tmp_path / "never-loaded"), str(tmp_path / "out"))


def test_cli_prints_atc_command(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from trl_edge.cli.export import export_command

    ckpt = save_tiny_checkpoint(str(tmp_path / "ckpt"), hidden_size=32)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2 + 2?\n\nThe quick brown fox.\n")
    out = tmp_path / "out"
    argv = [ckpt, "--output_dir", str(out), "--seq_len", "8", "--calibration_file", str(prompts)]
    assert export_command(argv) == 0
    printed = capsys.readouterr().out
    assert "atc --model=model.onnx --framework=5 --output=model --soc_version=Ascend310B1" in printed
    assert 'input_shape="input_ids:1,8;attention_mask:1,8"' in printed
    assert "fp16 vs fp32" in printed and "SAFE" in printed
    assert json.load(open(out / "export_report.json"))["num_calibration_prompts"] == 2


def test_cli_no_onnx(tmp_path, capsys):
    from trl_edge.cli.export import export_command

    ckpt = save_tiny_checkpoint(str(tmp_path / "ckpt"), hidden_size=32)
    assert export_command([ckpt, "--output_dir", str(tmp_path / "out"), "--seq_len", "8", "--no_onnx"]) == 0
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert (tmp_path / "out" / "model.safetensors").exists()
