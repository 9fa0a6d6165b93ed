"""The README's two commands, `make quickstart` and `make test`, from a clean clone of this repository.

The clone gets its own virtual environment, which reuses the packages the running interpreter already has (so the
test downloads nothing): where pytest runs outside a virtual environment, `make` creates it (`--system-site-packages`);
inside one (CI's `.venv`), the test creates it with a path file onto every site-packages the running interpreter
sees, and `make` installs into it. The quickstart is cut short with `QUICKSTART_FLAGS` (its first stage, on a 2-layer
student), the tests with `TESTS` (one test file); what is checked is the setup both share and that a second run
installs nothing.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="needs make and git"),
    pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout to clone"),
]


def make(clone, *args, env):
    result = subprocess.run(["make", *args], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_make_quickstart_and_make_test_from_a_clean_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    venv = tmp_path / "venv"
    if sys.prefix != sys.base_prefix:  # running inside a virtual environment: give the clone's one its packages
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        site = next((venv / "lib").glob("python*/site-packages"))
        outer = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
        (site / "outer.pth").write_text("".join(f"{p}\n" for p in [sysconfig.get_paths()["purelib"], *outer]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the clone's own trl_edge, as a user has it
    env["HF_HUB_OFFLINE"] = "1"
    settings = [f"PYTHON={sys.executable}", f"VENV={venv}"]

    out = tmp_path / "quickstart"
    flags = f"QUICKSTART_FLAGS=--until student --set stages.0.num_layers=2 --output_dir {out}"
    log = make(clone, "quickstart", *settings, flags, env=env)
    assert "pip install" in log  # the first command set the environment up
    assert (out / "00-student/model/config.json").exists()
    installed = subprocess.run(
        [str(venv / "bin/python"), "-c", "import trl_edge; print(trl_edge.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert Path(installed.strip()).is_relative_to(clone)  # the venv runs the clone's code

    log = make(clone, "test", *settings, "TESTS=tests/test_pacing.py", "PYTEST_FLAGS=-q", env=env)
    assert "pip install" not in log  # the second command reused the setup
    assert "ruff check" in log and " passed" in log and " failed" not in log
    assert not subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout

    # The stamp is keyed on pyproject.toml's content: an edited one installs again.
    with open(clone / "pyproject.toml", "a") as f:
        f.write("\n# edited\n")
    assert "pip install" in make(clone, "-n", "install", *settings, env=env)
