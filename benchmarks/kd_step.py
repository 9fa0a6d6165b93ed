"""One training step of offline KD (from a teacher cache) next to plain SFT and TRL's GKD, side by side in one run.

    python benchmarks/kd_step.py                 # SmolLM2-135M-shaped student, 4 x 512 tokens, 2 threads: ~8 min
    python benchmarks/kd_step.py --quick         # 4-layer student, 12-layer teacher, 2 x 256 tokens: ~1.5 min
    python benchmarks/kd_step.py --arms --head_bench   # only the LM head + loss of each arm, alone: ~2.5 min

Three arms, each a real trainer doing real AdamW steps on the same student (a randomly initialised Llama of
SmolLM2-135M's shape: hidden 576, 30 layers, vocabulary 49152, tied embeddings; step times depend on the shape, not
the weights), the same token sequences and the same batch (loss on the second half of each sequence, the
"completion"), fp32 on the CPU, gradient checkpointing off everywhere, one fixed torch thread count:

* ``ours``: ``OfflineOnPolicyKDTrainer`` on a teacher cache (k = 64, compact encoding) made beforehand over the same
  sequences (the caching is not timed; a shallow random teacher of the same width and vocabulary makes it, since
  the cache's contents do not change the student's step);
* ``sft``: TRL's ``SFTTrainer`` on the same rows (``input_ids`` + ``labels``, ``skip_prepare_dataset``);
* ``gkd``: TRL's ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0`` (no generation: the data's completions) and a
  live teacher three times as deep as the student (90 layers, same width and vocabulary), fed the same token ids
  through its own ``DataCollatorForChatML`` (pre-tokenized rows with a ``completion_mask``, so nothing is
  re-tokenized). ``beta=0`` by default (``--gkd_beta``): forward KL, the divergence the ``ours`` arm uses.

Each arm runs in a fresh process. ``ours`` and ``sft`` run side by side and take turns step by step (so a burst of
other work on a shared machine hits both alike), then ``gkd`` alone (``--sequential``: one arm after the other).
The first ``--warmup`` optimizer step(s) are not timed; reported are the median of ``--steps`` steps
(``on_step_begin`` -> ``on_step_end`` of a TrainerCallback: forward, backward, clipping, AdamW; the batch is fetched
and collated before ``on_step_begin``), the CPU seconds the process used meanwhile, how many cores other processes
kept busy meanwhile (/proc/stat), and the process's peak resident memory (VmHWM from /proc/self/status;
``ru_maxrss`` would carry the parent's peak over). Forward hooks and timers split each step into backbone forward,
teacher forward, LM head + loss forward, backward and clipping + AdamW; a thread sampling the resident set every
5 ms records in which of these phases it peaked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import numpy as np  # noqa: E402

ARMS = ("ours", "sft", "gkd")
ARM_TRAINERS = {
    "ours": "trl_edge OfflineOnPolicyKDTrainer (teacher cache, k=64 compact)",
    "sft": "trl SFTTrainer",
    "gkd": "trl.experimental.gkd GKDTrainer (lmbda=0, live teacher)",
}
SMOLLM2_SHAPE = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
)  # fmt: skip
PHASES = ("data", "backbone_fwd", "teacher_fwd", "head_loss_fwd", "backward", "clip_optimizer")


# ---------------------------------------------------------------------------------------------------------- shared
def build_tokenizer(vocab_size: int):
    """A word-level tokenizer over ``vocab_size`` tokens: the rows are pre-tokenized, the trainers need the object."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=1 << 20
    )


def token_rows(num_samples: int, seq_len: int, vocab_size: int, seed: int = 0) -> list[dict]:
    """Random sequences; the second half of each carries the loss (the "completion")."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_samples):
        ids = rng.integers(3, vocab_size, size=seq_len).tolist()
        half = seq_len // 2
        completion_mask = [0] * half + [1] * (seq_len - half)
        rows.append({"input_ids": ids, "labels": [-100] * half + ids[half:], "completion_mask": completion_mask})
    return rows


def build_llama(shape: dict, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=torch.float32)


def shapes(args) -> tuple[dict, dict, dict]:
    """(student, live GKD teacher, cache teacher) shapes."""
    student = dict(SMOLLM2_SHAPE, num_hidden_layers=args.student_layers)
    teacher = dict(SMOLLM2_SHAPE, num_hidden_layers=args.teacher_layers)
    cache_teacher = dict(SMOLLM2_SHAPE, num_hidden_layers=args.cache_teacher_layers)
    return student, teacher, cache_teacher


def _system_busy_s() -> float:
    """Seconds of CPU time all processes have used since boot (/proc/stat, minus idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


# ---------------------------------------------------------------------------------------------------------- child
class _Probe:
    """Phase timers, and a thread that samples the resident set every few ms to see in which phase it peaks."""

    def __init__(self, interval: float = 0.005):
        self.phase = "setup"
        self.totals: dict[str, float] = {}
        self._since = time.perf_counter()
        self.peak_kb, self.peak_phase = 0, "setup"
        self.peak_by_phase: dict[str, int] = {}
        self._stop = threading.Event()
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        self.totals[self.phase] = self.totals.get(self.phase, 0.0) + now - self._since
        self.phase, self._since = phase, now

    def take(self) -> dict[str, float]:
        self.enter(self.phase)
        totals, self.totals = self.totals, {}
        return totals

    def _sample(self, interval: float) -> None:
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                rss_kb = int(f.read().split()[1]) * self._page_kb
            phase = self.phase
            if rss_kb > self.peak_kb:
                self.peak_kb, self.peak_phase = rss_kb, phase
            self.peak_by_phase[phase] = max(self.peak_by_phase.get(phase, 0), rss_kb)
            time.sleep(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _instrument(trainer, probe: _Probe, teacher=None, gated: bool = False):
    """Hooks that move the probe from phase to phase; returns the TrainerCallback that collects per-step records."""
    from transformers import TrainerCallback

    model = trainer.model
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    backbone.register_forward_pre_hook(lambda *_: probe.enter("backbone_fwd"))
    backbone.register_forward_hook(lambda *_: probe.enter("head_loss_fwd"))
    if teacher is not None:
        teacher.register_forward_pre_hook(lambda *_: probe.enter("teacher_fwd"))
        teacher.register_forward_hook(lambda *_: probe.enter("head_loss_fwd"))

    compute_loss, training_step = trainer.compute_loss, trainer.training_step

    def timed_compute_loss(*a, **k):
        out = compute_loss(*a, **k)
        probe.enter("backward")  # the Trainer calls backward right after
        return out

    def timed_training_step(*a, **k):
        out = training_step(*a, **k)
        probe.enter("clip_optimizer")
        return out

    trainer.compute_loss, trainer.training_step = timed_compute_loss, timed_training_step

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.records: list[dict] = []
            self._t0 = self._last_end = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._fetch = probe.take().get("data", 0.0)  # fetch + collate of this step's batch (after the last end)
            if gated:  # interleaved run: wait for the parent's turn signal (not timed)
                probe.enter("wait")
                print(f"READY {len(self.records)}", flush=True)
                if sys.stdin.readline().strip() != "go":
                    raise SystemExit("the parent went away")
                probe.take()
            probe.enter("backbone_fwd")
            self._busy0, self._cpu0 = _system_busy_s(), time.process_time()
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            end, cpu = time.perf_counter(), time.process_time() - self._cpu0
            others = (_system_busy_s() - self._busy0 - cpu) / (end - self._t0)
            phases = probe.take()
            probe.enter("data")
            record = {
                "step_s": end - self._t0,
                "cpu_s": cpu,  # CPU seconds of all the process's threads: less sensitive to other jobs than wall
                "other_jobs_cores": max(others, 0.0),  # CPUs kept busy by other processes meanwhile
                "end_to_end_s": None if self._last_end is None else end - self._last_end,
                "data_s": self._fetch,
                **{f"{name}_s": phases.get(name, 0.0) for name in PHASES if name != "data"},
                "rss_after_mb": _status_kb("VmRSS") / 1024,
            }
            self.records.append(record)
            self._last_end = end
            if gated:
                print(f"DONE {len(self.records)} {record['step_s']:.3f}", flush=True)

    timer = StepTimer()
    trainer.add_callback(timer)
    return timer


def run_arm(arm: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    probe = _Probe()
    t_start = time.perf_counter()
    from datasets import Dataset

    student_shape, teacher_shape, _ = shapes(args)
    vocab = student_shape["vocab_size"]
    tokenizer = build_tokenizer(vocab)
    rows = token_rows(args.num_samples, args.seq_len, vocab, seed=args.seed)
    student = build_llama(student_shape, seed=args.seed)
    common = dict(
        output_dir=str(Path(args.workdir) / arm), per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps, learning_rate=1e-5, optim="adamw_torch", lr_scheduler_type="constant",
        max_grad_norm=1.0, logging_steps=args.warmup + args.steps, save_strategy="no", report_to=[], use_cpu=True,
        bf16=False, fp16=False, seed=args.seed, disable_tqdm=True, dataloader_num_workers=0,
        gradient_checkpointing=False, activation_checkpointing=False, max_length=args.seq_len,
    )  # fmt: skip
    teacher = None
    if arm == "ours":
        from trl_edge.cache.reader import TeacherLogitCache
        from trl_edge.trainer.offline_kd_config import OfflineOnPolicyKDConfig
        from trl_edge.trainer.offline_kd_trainer import OfflineOnPolicyKDTrainer

        kd_kwargs = {"kd_chunk_size": args.kd_chunk_size} if args.kd_chunk_size else {}
        config = OfflineOnPolicyKDConfig(**common, **kd_kwargs)
        cache = TeacherLogitCache(Path(args.workdir) / "cache")
        trainer = OfflineOnPolicyKDTrainer(student, config, train_dataset=cache, processing_class=tokenizer)
        loss_desc = (
            f"{config.kd_weight} * {config.divergence} (top-{cache.metadata.top_k} + tail bucket) + "
            f"{1 - config.kd_weight:.1f} * CE, LM head in chunks of {config.kd_chunk_size or 'automatic size'} "
            "scored positions"
        )
    elif arm == "sft":
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**common, dataset_kwargs={"skip_prepare_dataset": True})
        dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
        trainer = SFTTrainer(student, config, train_dataset=dataset, processing_class=tokenizer)
        loss_desc = "CE through TRL's fused chunked LM head (add_fused_lm_head)"
    elif arm == "gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        config = GKDConfig(**common, lmbda=0.0, beta=args.gkd_beta, seq_kd=False)
        # DataCollatorForChatML takes pre-tokenized rows: the completion_mask gives the prompt/completion boundary,
        # and a "prompt" entry (unused once input_ids are there) keeps it from applying a chat template.
        dataset = Dataset.from_list(
            [{"prompt": "", "input_ids": r["input_ids"], "completion_mask": r["completion_mask"]} for r in rows]
        )
        teacher = build_llama(teacher_shape, seed=args.seed + 1)
        trainer = GKDTrainer(student, teacher, args=config, train_dataset=dataset, processing_class=tokenizer)
        teacher = trainer.teacher_model
        loss_desc = f"generalized JSD beta={args.gkd_beta} over the full vocabulary, full [B, L, V] logits of both"
    else:
        raise ValueError(arm)

    model = trainer.model
    grad_ckpt = bool(getattr(model, "is_gradient_checkpointing", False))
    if grad_ckpt:
        raise RuntimeError(f"{arm}: gradient checkpointing is on despite gradient_checkpointing=False")
    timer = _instrument(trainer, probe, teacher, gated=args.gated)
    setup_s = time.perf_counter() - t_start
    rss_setup_mb, hwm_setup_mb = _status_kb("VmRSS") / 1024, _status_kb("VmHWM") / 1024
    probe.enter("data")
    output = trainer.train()
    probe.stop()
    records = timer.records[args.warmup :]
    med = {key: statistics.median(r[key] for r in records) for key in records[0] if key != "end_to_end_s"}
    del med["rss_after_mb"]
    ends = [r["end_to_end_s"] for r in records if r["end_to_end_s"] is not None]
    return {
        "arm": arm,
        "trainer": ARM_TRAINERS[arm],
        "loss": loss_desc,
        "step_s": [r["step_s"] for r in records],
        "warmup_step_s": [r["step_s"] for r in timer.records[: args.warmup]],
        "median_step_s": med["step_s"],
        "median_end_to_end_s": statistics.median(ends) if ends else None,
        "median_cpu_s": med["cpu_s"],
        "median_other_jobs_cores": med["other_jobs_cores"],
        "median_phase_s": {name: med[f"{name}_s"] for name in PHASES},
        "records": timer.records,
        "rss_after_setup_mb": rss_setup_mb,
        "peak_rss_after_setup_mb": hwm_setup_mb,
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
        "sampled_peak_mb": probe.peak_kb / 1024,
        "peak_phase": probe.peak_phase,
        "sampled_peak_by_phase_mb": {k: v / 1024 for k, v in probe.peak_by_phase.items()},
        "train_loss": output.training_loss,
        "gradient_checkpointing": grad_ckpt,
        "student_params": sum(p.numel() for p in trainer.model.parameters()),
        "teacher_params": None if teacher is None else sum(p.numel() for p in teacher.parameters()),
        "setup_s": setup_s,
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------------------- head
def head_bench(args, repeats: int = 2) -> dict:
    """The LM head + loss alone, forward and backward, on the same random hidden states: what each arm's loss costs.

    ``ours_auto`` is `chunked_kd_loss` with the config's loss settings on the scored positions, ``chunk_size=None``
    (`auto_kd_chunk_size`) and ``compute_stats=False``, as the trainer runs it by default between logging steps;
    ``ours_auto_stats`` the same with the logged stats (a logging step); ``ours_fixed`` and ``ours_fixed_stats`` the
    same in chunks of ``--kd_chunk_size`` (1024 when 0: the earlier default, one chunk here).
    ``trl_fused_ce_all`` is TRL's fused chunked log-prob (what SFTTrainer runs) on every position, as it does on a
    device without Triton (this CPU); ``trl_fused_ce_scored`` the same on the scored positions only (what it does
    with Triton, on a GPU); ``autograd_ce`` plain full-logits cross-entropy by autograd on the scored positions;
    ``matmuls`` only the three GEMMs any of them needs (logits, grad of the hidden states, grad of the head). Best of
    ``repeats`` after one warm-up round, the cases taking turns, in wall and in CPU seconds (the process's, all
    threads: less inflated than wall time by other jobs on a shared machine), and every case over ``autograd_ce``
    and over ``matmuls``.
    """
    import torch
    import torch.nn.functional as F
    from trl.kernels import ChunkedLogProbFunction

    from trl_edge.losses import chunked_kd_loss
    from trl_edge.trainer.offline_kd_config import OfflineOnPolicyKDConfig

    torch.set_num_threads(args.threads)
    cfg = OfflineOnPolicyKDConfig(output_dir=str(Path(args.workdir) / "head"), report_to=[], use_cpu=True, bf16=False)
    fixed_chunk = args.kd_chunk_size or 1024
    vocab, hidden_size = SMOLLM2_SHAPE["vocab_size"], SMOLLM2_SHAPE["hidden_size"]
    n_scored = args.batch_size * (args.seq_len - args.seq_len // 2)
    n_all = args.batch_size * (args.seq_len - 1)
    gen = torch.Generator().manual_seed(args.seed)
    weight = (0.02 * torch.randn(vocab, hidden_size, generator=gen)).requires_grad_(True)
    hidden = torch.randn(n_all, hidden_size, generator=gen).requires_grad_(True)
    targets = torch.randint(0, vocab, (n_all,), generator=gen)
    ids = torch.argsort(torch.rand(n_scored, vocab, generator=gen), dim=-1)[:, : args.top_k]
    logprobs = torch.sort(torch.log_softmax(torch.randn(n_scored, args.top_k, generator=gen), -1) - 0.1, -1, True)[0]
    token_lp = torch.randn(n_scored, generator=gen)
    h_scored, t_scored = hidden[:n_scored], targets[:n_scored]

    def ours(chunk_size, compute_stats):
        def run():
            result = chunked_kd_loss(
                h_scored, weight, None, ids, logprobs, token_lp, t_scored, kd_weight=cfg.kd_weight,
                divergence=cfg.divergence, beta=cfg.beta, skew_alpha=cfg.skew_alpha, temperature=cfg.temperature,
                tail=cfg.tail, normalizer=n_scored, chunk_size=chunk_size, compute_stats=compute_stats,
            )  # fmt: skip
            result.loss.backward()

        return run

    def trl_fused(h, t):
        out = ChunkedLogProbFunction.apply(
            h, weight, None, t, 1.0, 32768, None, 1.0, ("log_probs", "entropy", "is_top1")
        )
        (-out[0].sum() / len(t)).backward()

    def autograd_ce():
        F.cross_entropy(h_scored @ weight.t(), t_scored).backward()

    def matmuls():
        with torch.no_grad():
            logits = h_scored @ weight.t()
            logits @ weight, logits.t() @ h_scored

    cases = {
        "ours_auto": ours(None, False),
        "ours_auto_stats": ours(None, True),
        "ours_fixed": ours(fixed_chunk, False),
        "ours_fixed_stats": ours(fixed_chunk, True),
        "autograd_ce": autograd_ce,  # right after ours in each round: the ratios compare cases seconds apart
        "matmuls": matmuls,
        "trl_fused_ce_all": lambda: trl_fused(hidden, targets),
        "trl_fused_ce_scored": lambda: trl_fused(h_scored, t_scored),
    }
    times = {name: [] for name in cases}
    cpu_times = {name: [] for name in cases}
    for _ in range(repeats + 1):  # round robin, so that a burst of other work hits every case alike
        for name, fn in cases.items():
            weight.grad = hidden.grad = None
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    out = {
        "scored_positions": n_scored,
        "all_positions": n_all,
        "fixed_chunk_size": fixed_chunk,
        "all_times_s": times,
        "all_cpu_times_s": cpu_times,
        "cpu_s": {name: min(values[1:]) for name, values in cpu_times.items()},
        "ratios": {},
    }
    for name, values in times.items():
        out[name] = min(values[1:])
    for name in cases:
        wall, cpu = out[name], out["cpu_s"][name]
        out["ratios"][name] = {
            "vs_autograd_ce": wall / out["autograd_ce"],
            "vs_matmuls": wall / out["matmuls"],
            "cpu_vs_autograd_ce": cpu / out["cpu_s"]["autograd_ce"],
            "cpu_vs_matmuls": cpu / out["cpu_s"]["matmuls"],
        }
        r = out["ratios"][name]
        print(
            f"[kd_step] head only, {name}: {wall:.2f} s wall ({r['vs_autograd_ce']:.2f}x autograd CE, "
            f"{r['vs_matmuls']:.2f}x the GEMMs), {cpu:.2f} CPU s ({r['cpu_vs_autograd_ce']:.2f}x, "
            f"{r['cpu_vs_matmuls']:.2f}x)",
            file=sys.stderr,
            flush=True,
        )
    return out


# ---------------------------------------------------------------------------------------------------------- parent
def make_cache(args) -> float:
    """The ``ours`` arm's teacher cache over the same rows; returns the seconds it took (not part of any step)."""
    import torch
    from datasets import Dataset

    from trl_edge.cache.tokenize import SFTTokenization
    from trl_edge.cache.writer import cache_teacher_logits

    torch.set_num_threads(args.threads)
    _, _, cache_shape = shapes(args)
    start = time.perf_counter()
    teacher = build_llama(cache_shape, seed=args.seed + 2)
    tokenizer = build_tokenizer(cache_shape["vocab_size"])
    rows = token_rows(args.num_samples, args.seq_len, cache_shape["vocab_size"], seed=args.seed)
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    cache_teacher_logits(
        teacher, tokenizer, dataset, Path(args.workdir) / "cache", top_k=args.top_k, encoding="compact",
        batch_size=args.batch_size, tokenization=SFTTokenization(max_length=args.seq_len), use_cpu=True,
    )  # fmt: skip
    return time.perf_counter() - start


def child_command(arm: str, args) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_arm", arm, "--_workdir", args.workdir, "--_gated"]
    for name in ("steps", "warmup", "seq_len", "batch_size", "threads", "seed", "student_layers", "teacher_layers",
                 "cache_teacher_layers", "top_k", "gkd_beta", "kd_chunk_size"):  # fmt: skip
        cmd += [f"--{name}", str(getattr(args, name))]
    return cmd


def _read_until(proc, prefix: str, arm: str, log: Path) -> str:
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
    proc.wait()
    sys.stderr.write(log.read_text()[-8000:])
    raise SystemExit(f"arm {arm} failed (exit code {proc.returncode}) before {prefix.strip()!r}")


def run_arms(args) -> dict:
    """One fresh process per arm. By default `ours` and `sft` run side by side and take turns step by step (a burst
    of other work on a shared machine then hits both alike), then `gkd` alone (holding all three in memory at once
    would need over 20 GB at the default size); `--sequential`: one arm after the other."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.sequential:
        groups = [[arm] for arm in args.arms]
    else:
        paired = [arm for arm in args.arms if arm in ("ours", "sft")]
        groups = ([paired] if paired else []) + [[arm] for arm in args.arms if arm not in paired]
    results = {}
    for group in groups:
        procs, logs, starts = {}, {}, {}
        for arm in group:
            print(f"[kd_step] starting arm {arm} ...", file=sys.stderr, flush=True)
            logs[arm] = Path(args.workdir) / f"{arm}.log"
            starts[arm] = time.perf_counter()
            procs[arm] = subprocess.Popen(
                child_command(arm, args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=logs[arm].open("w"), text=True, env=env,
            )  # fmt: skip
        try:
            for step in range(args.warmup + args.steps):
                for arm in group:
                    _read_until(procs[arm], "READY", arm, logs[arm])
                    procs[arm].stdin.write("go\n")
                    procs[arm].stdin.flush()
                    done = _read_until(procs[arm], "DONE", arm, logs[arm])
                    kind = "warm-up" if step < args.warmup else "timed"
                    print(f"[kd_step] {arm} step {step + 1} ({kind}): {float(done.split()[2]):.2f} s", file=sys.stderr,
                          flush=True)  # fmt: skip
            for arm in group:
                line = _read_until(procs[arm], "RESULT ", arm, logs[arm])
                procs[arm].wait()
                results[arm] = json.loads(line[len("RESULT ") :])
                results[arm]["process_wall_s"] = time.perf_counter() - starts[arm]
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
    return {arm: results[arm] for arm in args.arms}


def markdown(results: dict) -> str:
    arms, head, lines = results["arms"], results.get("head_only_s"), []
    sft = arms.get("sft")
    if arms:
        lines += [
            "| arm | trainer | median step (s) | timed steps (s) | step / SFT | CPU s / step | other jobs (cores) | "
            "peak RSS (MB) | peak / SFT | RSS before training (MB) | peak in phase |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for name, r in arms.items():
        ratio_t = f"{r['median_step_s'] / sft['median_step_s']:.2f}" if sft else "-"
        ratio_m = f"{r['peak_rss_mb'] / sft['peak_rss_mb']:.2f}" if sft else "-"
        steps = ", ".join(f"{s:.2f}" for s in r["step_s"])
        lines.append(
            f"| {name} | {r['trainer']} | {r['median_step_s']:.2f} | {steps} | {ratio_t} | {r['median_cpu_s']:.1f} | "
            f"{r['median_other_jobs_cores']:.1f} | {r['peak_rss_mb']:.0f} | {ratio_m} | "
            f"{r['rss_after_setup_mb']:.0f} | {r['peak_phase']} |"
        )
    if "ours_over_sft_per_round" in results:
        pairs = results["ours_over_sft_per_round"]
        lines += ["", f"ours / sft step by step (adjacent steps): {', '.join(f'{x:.2f}' for x in pairs)}"]
    if arms:
        lines += [
            "",
            "Median seconds per phase of a timed step (data = fetch + collate, before `on_step_begin`, not in the "
            "step):",
            "",
            "| arm | data | backbone fwd | teacher fwd | LM head + loss fwd | backward | clip + AdamW |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
    for name, r in arms.items():
        p = r["median_phase_s"]
        lines.append(
            f"| {name} | {p['data']:.3f} | {p['backbone_fwd']:.2f} | {p['teacher_fwd']:.2f} | "
            f"{p['head_loss_fwd']:.2f} | {p['backward']:.2f} | {p['clip_optimizer']:.2f} |"
        )
    if head:
        labels = {
            "ours_auto": "ours (KD + CE), automatic chunks, no stats",
            "ours_auto_stats": "ours, automatic chunks, with stats",
            "ours_fixed": f"ours, chunks of {head['fixed_chunk_size']}, no stats",
            "ours_fixed_stats": f"ours, chunks of {head['fixed_chunk_size']}, with stats",
            "trl_fused_ce_all": f"TRL fused CE, all {head['all_positions']} positions (SFTTrainer on CPU)",
            "trl_fused_ce_scored": "TRL fused CE, scored positions (SFTTrainer with Triton)",
            "autograd_ce": "autograd CE, scored",
            "matmuls": "the 3 GEMMs, scored",
        }
        lines += [
            "",
            f"LM head + loss alone, forward + backward, best of 2 ({head['scored_positions']} scored positions, "
            f"{head['all_positions']} in all):",
            "",
            "| case | wall s | / autograd CE | / GEMMs | CPU s | CPU / autograd CE | CPU / GEMMs |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, label in labels.items():
            r = head["ratios"][name]
            lines.append(
                f"| {label} | {head[name]:.2f} | {r['vs_autograd_ce']:.2f} | {r['vs_matmuls']:.2f} | "
                f"{head['cpu_s'][name]:.2f} | {r['cpu_vs_autograd_ce']:.2f} | {r['cpu_vs_matmuls']:.2f} |"
            )
    return "\n".join(lines).strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="Timed optimizer steps per arm (median reported).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed optimizer steps before them.")
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every arm.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student_layers", type=int, default=None, help="Default 30 (4 with --quick).")
    parser.add_argument("--teacher_layers", type=int, default=None, help="GKD's live teacher; default 3x student.")
    parser.add_argument("--cache_teacher_layers", type=int, default=2, help="Makes the cache (not timed).")
    parser.add_argument("--top_k", type=int, default=64)
    parser.add_argument("--gkd_beta", type=float, default=0.0, help="GKD's beta: 0 = forward KL (as ours).")
    parser.add_argument(
        "--kd_chunk_size", type=int, default=0,
        help="ours: kd_chunk_size (0: the config default); --head_bench times it (1024 if 0) and the automatic one.",
    )  # fmt: skip
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS, help="None: only --head_bench.")
    parser.add_argument("--quick", action="store_true", help="4-layer student, 12-layer teacher, 2 x 256 tokens.")
    parser.add_argument(
        "--head_bench", action="store_true", help="Also time the LM head + loss alone for each arm (+2-3 min)."
    )
    parser.add_argument("--output_json", default="benchmarks/results/kd_step.json")
    parser.add_argument(
        "--sequential", action="store_true", help="Run the arms one after the other instead of interleaving steps."
    )
    parser.add_argument("--_arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--_gated", dest="gated", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_workdir", dest="workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and args.student_layers is None:
        args.student_layers = 4
    if args.quick and "--seq_len" not in sys.argv:
        args.seq_len = 256
    if args.quick and "--batch_size" not in sys.argv:
        args.batch_size = 2
    args.student_layers = args.student_layers or SMOLLM2_SHAPE["num_hidden_layers"]
    args.teacher_layers = args.teacher_layers or 3 * args.student_layers
    args.num_samples = args.batch_size * (args.warmup + args.steps)

    if args._arm:  # child: one arm, one JSON line on stdout
        result = run_arm(args._arm, args)
        print("RESULT " + json.dumps(result))
        return

    wall = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kd_step-") as workdir:
        args.workdir = workdir
        print(f"[kd_step] caching teacher logits ({args.cache_teacher_layers}-layer teacher, not timed) ...",
              file=sys.stderr, flush=True)  # fmt: skip
        cache_s = make_cache(args) if args.arms else 0.0
        arms = run_arms(args) if args.arms else {}
        head = head_bench(args) if args.head_bench else None
    import torch
    import transformers
    import trl

    student_shape, teacher_shape, cache_shape = shapes(args)
    results = {
        "config": {
            "steps": args.steps,
            "warmup": args.warmup,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "scored_positions_per_step": args.batch_size * (args.seq_len - args.seq_len // 2),
            "threads": args.threads,
            "seed": args.seed,
            "student_shape": student_shape,
            "gkd_teacher_shape": teacher_shape,
            "cache_teacher_shape": cache_shape,
            "top_k": args.top_k,
            "cache_encoding": "compact",
            "gkd_beta": args.gkd_beta,
            "kd_chunk_size": args.kd_chunk_size or None,
            "dtype": "float32",
            "optimizer": "adamw_torch",
            "gradient_checkpointing": False,
            "quick": args.quick,
            "interleaved": not args.sequential,
        },  # fmt: skip
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },  # fmt: skip
        "cache_build_s_not_timed": cache_s,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "arms": arms,
        "head_only_s": head,
    }
    if "sft" in arms and "ours" in arms:  # step by step: each ours step against the sft step right after it
        pairs = [o["step_s"] / q["step_s"] for o, q in zip(arms["ours"]["records"], arms["sft"]["records"])]
        results["ours_over_sft_per_round"] = pairs[args.warmup :]
    if "sft" in arms:
        results["ratios_vs_sft"] = {
            arm: {
                "step_time": r["median_step_s"] / arms["sft"]["median_step_s"],
                "peak_rss": r["peak_rss_mb"] / arms["sft"]["peak_rss_mb"],
            }
            for arm, r in arms.items()
        }
    results["wall_s"] = time.perf_counter() - wall
    table = markdown(results)
    results["table"] = table
    s = student_shape
    params = f" ({arms[next(iter(arms))]['student_params'] / 1e6:.0f}M params)" if arms else ""
    print(
        f"\nStudent: random Llama, {s['num_hidden_layers']} layers, hidden {s['hidden_size']}, vocab "
        f"{s['vocab_size']}{params}; batch {args.batch_size} x {args.seq_len} tokens, loss on the last "
        f"{args.seq_len - args.seq_len // 2} of each; fp32, AdamW, {args.threads} threads; GKD teacher "
        f"{teacher_shape['num_hidden_layers']} layers; median of {args.steps} steps after {args.warmup} warm-up\n"
    )
    print(table)
    cache_note = f"Cache (k={args.top_k}, compact) built beforehand in {cache_s:.1f} s, not counted. " if arms else ""
    print(f"\n{cache_note}Load average {load_before[0]:.2f} before, {results['load_average_after'][0]:.2f} after. "
          f"Wall time {results['wall_s']:.0f} s.")  # fmt: skip
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(results, indent=2))
    print(f"Wrote {args.output_json}")


if __name__ == "__main__":
    main()
