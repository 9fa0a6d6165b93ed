"""trl_edge.student: depth pruning (evenly spaced layers), the saved student, KV-cache consistency, the CLI."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from trl_edge import student as student_module
from trl_edge.cli.main import main as cli_main
from trl_edge.student import evenly_spaced_layers, make_student, prune_layers
from trl_edge.testing import build_tiny_model

ARCHS = ["llama", "qwen2", "qwen3"]
TEACHER_LAYERS = 6


def save_teacher(path, model, tokenizer):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=ARCHS)
def teacher_dir(request, tokenizer, tmp_path_factory):
    model = build_tiny_model(tokenizer, arch=request.param, num_layers=TEACHER_LAYERS, seed=1)
    return save_teacher(tmp_path_factory.mktemp(f"teacher-{request.param}"), model, tokenizer)


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def greedy_with_cache(model, prompt, steps):
    model.generation_config.eos_token_id = None  # always `steps` tokens, as the loop below
    out = model.generate(prompt, max_new_tokens=steps, do_sample=False, use_cache=True, pad_token_id=0)
    return out[0, prompt.shape[1] :].tolist()


def greedy_without_cache(model, prompt, steps):
    ids = prompt
    with torch.no_grad():
        for _ in range(steps):
            next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    return ids[0, prompt.shape[1] :].tolist()


PROMPT = torch.tensor([[7, 21, 40, 3, 99, 150, 12, 64]])


@pytest.mark.parametrize(
    "teacher_layers, num_layers, expected",
    [
        (30, 10, [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]),  # round(linspace(0, 29, 10))
        (6, 3, [0, 2, 5]),
        (5, 2, [0, 4]),
        (6, 6, [0, 1, 2, 3, 4, 5]),
        (6, 1, [0]),
    ],
)
def test_evenly_spaced_layers_include_the_first_and_last(teacher_layers, num_layers, expected):
    assert evenly_spaced_layers(teacher_layers, num_layers) == expected


def test_kept_layers_are_exactly_the_teachers(teacher_dir, tmp_path):
    out = make_student(teacher_dir, 3, tmp_path / "student")
    teacher, student = load(teacher_dir), load(out)
    provenance = json.loads((tmp_path / "student" / "student_provenance.json").read_text())
    keep = provenance["kept_layers"]
    assert keep == [0, 2, 5]  # first and last included
    assert student.config.num_hidden_layers == 3 and len(student.model.layers) == 3
    layer_types = student.config.to_dict().get("layer_types")  # qwen2/qwen3 have one entry per layer, llama none
    assert layer_types is None or len(layer_types) == 3
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, value in student_state.items():
        if name.startswith("model.layers."):
            index, rest = name[len("model.layers.") :].split(".", 1)
            source = f"model.layers.{keep[int(index)]}.{rest}"
        else:  # embeddings, final norm, LM head
            source = name
        assert torch.equal(value, teacher_state[source]), name
    assert {k for k in student_state if not k.startswith("model.layers.")} == {
        k for k in teacher_state if not k.startswith("model.layers.")
    }
    assert provenance["teacher"] == teacher_dir and provenance["teacher_num_layers"] == TEACHER_LAYERS
    assert provenance["student_parameters"] == sum(p.numel() for p in student.parameters())
    assert provenance["teacher_parameters"] == sum(p.numel() for p in teacher.parameters())
    assert provenance["student_parameters"] < provenance["teacher_parameters"]
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(teacher_dir).get_vocab()


def test_generation_with_kv_cache_matches_a_no_cache_loop(teacher_dir, tmp_path):
    pruned = prune_layers(load(teacher_dir), [0, 2, 5])  # in memory: layer_idx must have been renumbered
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    reloaded = load(make_student(teacher_dir, 3, tmp_path / "student"))
    for model in (pruned, reloaded):
        assert greedy_with_cache(model, PROMPT, 12) == greedy_without_cache(model, PROMPT, 12)


def test_the_cache_check_catches_stale_layer_indices(teacher_dir, monkeypatch):
    monkeypatch.setattr(student_module, "LAYER_INDEX_ATTRIBUTES", ())  # prune without renumbering
    stale = prune_layers(load(teacher_dir), [0, 2, 5])
    assert [layer.self_attn.layer_idx for layer in stale.model.layers] == [0, 2, 5]
    try:
        consistent = greedy_with_cache(stale, PROMPT, 12) == greedy_without_cache(stale, PROMPT, 12)
    except IndexError:  # the cache has 3 layers and layer_idx 5 points past them
        consistent = False
    assert not consistent


def test_full_depth_reproduces_the_teachers_logits(teacher_dir, tmp_path):
    teacher, student = load(teacher_dir), load(make_student(teacher_dir, TEACHER_LAYERS, tmp_path / "same"))
    ids = torch.randint(0, teacher.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(teacher(ids).logits, student(ids).logits)


def test_sliding_window_layers_keep_their_kind(tokenizer, tmp_path):
    """qwen2 with sliding window from layer 2 on: layer_types and max_window_layers follow the kept layers."""
    base = build_tiny_model(tokenizer, arch="qwen2", num_layers=TEACHER_LAYERS).config.to_dict()
    config = Qwen2Config(
        **{**base, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2, "layer_types": None}
    )
    assert config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 4
    torch.manual_seed(0)
    teacher_dir = save_teacher(tmp_path / "teacher", AutoModelForCausalLM.from_config(config), tokenizer)
    student = load(make_student(teacher_dir, 3, tmp_path / "student"))  # keeps 0, 2, 5
    assert student.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert student.config.max_window_layers == 1
    assert [layer.self_attn.sliding_window for layer in student.model.layers] == [None, 4, 4]
    assert greedy_with_cache(student, PROMPT, 8) == greedy_without_cache(student, PROMPT, 8)


def test_tied_embeddings_stay_tied(tokenizer, tmp_path):
    config = build_tiny_model(tokenizer, num_layers=4).config
    config.tie_word_embeddings = True
    teacher = AutoModelForCausalLM.from_config(config)
    assert teacher.lm_head.weight is teacher.model.embed_tokens.weight
    student = load(make_student(teacher, 2, tmp_path / "student", tokenizer=tokenizer))
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert len(teacher.model.layers) == 4  # a teacher passed as a model is copied, not pruned


@pytest.mark.parametrize("num_layers", [0, -1, TEACHER_LAYERS + 1, 2.0, True])
def test_bad_num_layers_fail_clearly(teacher_dir, tmp_path, num_layers):
    with pytest.raises(ValueError, match="num_layers must be an integer"):
        make_student(teacher_dir, num_layers, tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_unknown_layout_and_bad_arguments_fail_clearly(tokenizer, teacher_dir, tmp_path):
    class NoLayers(torch.nn.Module):
        config = copy.deepcopy(build_tiny_model(tokenizer).config)

        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(ValueError, match=r"NoLayers: looked for a torch.nn.ModuleList at model\.model\.layers"):
        make_student(NoLayers(), 1, tmp_path / "s", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="pass its tokenizer"):
        make_student(build_tiny_model(tokenizer), 1, tmp_path / "s")
    with pytest.raises(ValueError, match="teacher's own directory"):
        make_student(teacher_dir, 2, teacher_dir)
    with pytest.raises(ValueError, match="increasing layer indices"):
        prune_layers(load(teacher_dir), [2, 0])


def test_cli_makes_a_student_end_to_end(teacher_dir, tmp_path, capsys):
    from safetensors import safe_open

    out = tmp_path / "cli-student"
    args = ["make-student", "--teacher", teacher_dir, "--num_layers", "2", "--output_dir", str(out)]
    assert cli_main([*args, "--dtype", "bfloat16"]) == 0
    printed = capsys.readouterr().out
    assert "Kept layers [0, 5] of the teacher's 6" in printed and f"Student saved to {out}" in printed
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 2
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert AutoTokenizer.from_pretrained(out) is not None

    assert cli_main([*args[:4], "9", *args[5:]]) == 2
    assert "error: num_layers must be an integer from 1 to the teacher's 6 decoder layers, got 9" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["make-student", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--teacher", "--num_layers", "--output_dir", "--dtype", "--trust_remote_code", "--revision"):
        assert flag in help_text
