"""Warm stage start-up: a single-process stage runs in a fresh child forked from a "zygote" that imported torch,
transformers, trl, datasets and trl_edge once, instead of paying ~10 s of interpreter and imports per stage.

The zygote is multiprocessing's fork server with those modules preloaded; it only imports, runs no torch op and
starts no thread pool, so forking it is safe. Each stage is one forked child: it sets the environment that
``accelerate launch`` would set for the stage's config (accelerate's own code computes it), sends its stdout and
stderr to the runner (which writes the stage's log as for a subprocess), runs the stage and exits, so its memory is
released before the next stage starts. Multi-process configs keep ``accelerate launch``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# What the zygote imports once (``zygote`` first: it shields torch_npu, then imports the rest).
PRELOAD = ["trl_edge.pipeline.zygote"]

_context = None


def single_process(accelerate_config: str | None) -> bool:
    """Whether ``accelerate launch`` would run this config as one plain process (its simple launcher)."""
    if accelerate_config is None:
        return True
    import yaml

    try:
        config = yaml.safe_load(Path(accelerate_config).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False  # accelerate launch will say what is wrong with it
    return (
        str(config.get("distributed_type", "NO")).upper() == "NO"
        and int(config.get("num_processes", 1) or 1) <= 1
        and int(config.get("num_machines", 1) or 1) <= 1
        and config.get("compute_environment", "LOCAL_MACHINE") == "LOCAL_MACHINE"
    )


def _get_context():
    global _context
    if _context is None:
        import multiprocessing

        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def start_zygote() -> None:
    """Start the zygote now (its imports overlap the runner's planning); later stages reuse it."""
    from multiprocessing import forkserver

    _get_context()
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the zygote's own environment only: the stages get today's
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def run_warm(argv: list[str], env: dict, lines) -> int:
    """Run the stage command ``argv`` (as ``StageKind.argv`` builds it) in a child of the zygote, with ``env``;
    ``lines(line)`` gets each line of its output (stdout and stderr). Returns its exit code."""
    start_zygote()
    context = _get_context()
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(list(argv), dict(env), os.getcwd(), writer), daemon=False)
    process.start()
    writer.close()
    with os.fdopen(os.dup(reader.fileno()), "r", encoding="utf-8", errors="replace") as output:
        reader.close()
        for line in output:
            lines(line)
    process.join()
    return process.exitcode


def _child(argv: list[str], env: dict, cwd: str, writer) -> None:
    """In the forked child: the stage's environment, its output to the runner, the stage itself, then exit."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(writer.fileno(), 1)
    os.dup2(writer.fileno(), 2)
    writer.close()
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(write_through=True, line_buffering=True)  # as PYTHONUNBUFFERED=1
    os.chdir(cwd)
    code = 0
    try:
        _run(argv, env)
    except SystemExit as err:
        code = err.code
    except BaseException:  # as an uncaught exception ends a Python process: its traceback, exit code 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()  # multiprocessing ends a child with os._exit: run what a normal exit would
        sys.stdout.flush()
        sys.stderr.flush()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.exit(code)


def _run(argv: list[str], env: dict) -> None:
    """``python -m MODULE ARGS`` run in this process (``runpy``, as ``-m`` does), under accelerate's environment when
    ``MODULE`` is ``accelerate.commands.launch``."""
    import runpy

    os.environ.clear()
    os.environ.update(env)
    assert argv[1] == "-m", argv
    module, args = argv[2], argv[3:]
    if module == "accelerate.commands.launch":  # [FLAGS, -m, SCRIPT, ARGS]: its simple launcher's environment
        from ..compat import accelerate_simple_launch

        module, args, launch_env = accelerate_simple_launch(args)
        os.environ.clear()
        os.environ.update(launch_env)
    _set_threads()
    sys.argv = [module, *args]  # runpy sets argv[0] to the module's file
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _set_threads() -> None:
    """torch picked its threads when the zygote imported it: apply the stage's own variables, by torch's rule
    (``MKL_NUM_THREADS`` over ``OMP_NUM_THREADS``, as ATen's ``intraop_default_num_threads``)."""
    for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        threads = os.environ.get(name, "")
        if threads.isdigit() and int(threads) > 0:
            import torch

            torch.set_num_threads(int(threads))
            return
