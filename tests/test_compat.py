"""The private TRL / transformers names in ``trl_edge.compat`` exist, as it uses them, in the installed versions (which
must be ones the pyproject allows); and no other module uses a private name of theirs."""

from __future__ import annotations

import ast
import inspect
import textwrap
import tomllib
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import trl_edge
from trl_edge import compat

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trl", "transformers", "accelerate")


def _versions() -> str:
    return ", ".join(f"{name} {version(name)}" for name in PACKAGES)


def _broken(symbol: str, what: str):
    pytest.fail(f"{symbol}: {what} (installed: {_versions()}). trl_edge/compat.py must follow it.")


def _reads_of(function, name: str) -> set[str]:
    """The attributes ``function``'s source reads of the variable ``name`` (``self.x`` -> ``x``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == name}  # fmt: skip


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_installed_versions_are_ones_the_pyproject_allows():
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    allowed = {r.name: r.specifier for r in map(Requirement, requirements) if r.name in PACKAGES}
    assert set(allowed) == set(PACKAGES)
    for name, specifier in allowed.items():
        if not specifier.contains(version(name), prereleases=True):
            pytest.fail(f"{name} {version(name)} is installed, but the pyproject allows {name}{specifier}: the checks "
                        "of trl_edge.compat below say nothing about the versions users get.")  # fmt: skip


def test_sft_prepare_dataset_reads_only_what_the_stand_in_carries():
    from trl import SFTTrainer

    from trl_edge.cache.tokenize import SFTTokenization

    symbol = "trl.SFTTrainer._prepare_dataset"
    prepare = getattr(SFTTrainer, "_prepare_dataset", None)
    if prepare is None:
        _broken(symbol, "gone")
    expected = ["self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"]
    if _parameters(prepare) != expected:
        _broken(symbol, f"its parameters are {_parameters(prepare)}, not {expected}")
    extra = _reads_of(prepare, "self") - set(compat.SFT_PREPARE_SELF_ATTRIBUTES)
    if extra:
        _broken(symbol, f"it reads self.{', self.'.join(sorted(extra))}, which the stand-in does not carry")
    given = {f.name for f in fields(SFTTokenization)} | set(compat.SFT_PREPARE_ARGS)
    extra = _reads_of(prepare, "args") - given
    if extra:
        _broken(symbol, f"it reads args.{', args.'.join(sorted(extra))}, which the stand-in does not carry")


def test_data_utils_tokenize_takes_a_prompt_and_chat_template_keywords():
    import trl.data_utils

    symbol = "trl.data_utils._tokenize"
    tokenize = getattr(trl.data_utils, "_tokenize", None)
    if tokenize is None:
        _broken(symbol, "gone")
    parameters = inspect.signature(tokenize).parameters
    kinds = [p.kind for p in parameters.values()]
    if list(parameters)[:2] != ["processing_class", "input"] or inspect.Parameter.VAR_KEYWORD not in kinds:
        _broken(symbol, f"its signature is {inspect.signature(tokenize)}, not (processing_class, input, **kwargs)")


def test_config_name_or_path_is_where_a_loaded_model_keeps_its_name(tokenizer):
    from trl_edge.testing import build_tiny_model

    model = build_tiny_model(tokenizer)
    model.config._name_or_path = "org/tiny"
    if not hasattr(type(model.config)(), "_name_or_path"):
        _broken("transformers.PretrainedConfig._name_or_path", "gone")
    assert compat.config_name_or_path(model.config) == "org/tiny"


def test_sft_trainer_keeps_the_metrics_and_the_token_count_the_kd_trainer_adds_to():
    from trl import SFTTrainer

    assigned = _reads_of(SFTTrainer.__init__, "self")
    for name in ("_metrics", "_total_train_tokens"):
        if name not in assigned:
            _broken(f"trl.SFTTrainer.{name}", "SFTTrainer.__init__ no longer sets it")


def test_the_trainer_hooks_the_trainers_override_exist():
    from trl import SFTTrainer

    for name in compat.TRAINER_HOOKS:
        if not hasattr(SFTTrainer, name):
            _broken(f"trl.SFTTrainer.{name}", "gone: the override in trl_edge.trainer would be dead")
    if _parameters(SFTTrainer._get_train_sampler) != ["self", "train_dataset"]:
        _broken(
            "transformers.Trainer._get_train_sampler",
            f"its parameters are {_parameters(SFTTrainer._get_train_sampler)}",
        )
    if _parameters(SFTTrainer._set_signature_columns_if_needed) != ["self"]:
        _broken("transformers.Trainer._set_signature_columns_if_needed", "its signature changed")


# The private names compat wraps: any other module using one bypasses the checks above.
WRAPPED = {"_prepare_dataset", "_tokenize", "_name_or_path", "_metrics", "_total_train_tokens"}


def test_no_module_but_compat_uses_a_private_trl_or_transformers_name():
    package = Path(trl_edge.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "compat.py" and path.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                offenders += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_")]  # fmt: skip
            elif isinstance(node, ast.Attribute) and node.attr in WRAPPED:
                offenders.append(f"{path.relative_to(package)}:{node.lineno}: .{node.attr}")
    assert offenders == []


def test_accelerate_simple_launch_gives_the_launchers_environment():
    cpu = str(Path(trl_edge.__file__).parents[1] / "recipes/accelerate/cpu.yaml")
    module, args, env = compat.accelerate_simple_launch(["--config_file", cpu, "-m", "trl_edge.scripts.sft", "--x"])
    assert (module, args) == ("trl_edge.scripts.sft", ["--x"])
    assert env["ACCELERATE_USE_CPU"] == "True" and env["ACCELERATE_MIXED_PRECISION"] == "no"
