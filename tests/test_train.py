"""The train CLI for real: 1 and 2 processes, exact resume after SIGKILL, Ctrl-C, divergence, one-line errors for bad
flags, and a --help built from TrainConfig."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import vibenanochat.checkpoint as checkpoint
from conftest import REPO, run_losses, torchrun_cmd
from vibenanochat.trainer import TrainConfig

ARGS = ["--depth", "2", "--seq-len", "64", "--device-batch-size", "4", "--total-batch-size", "512",
        "--num-iterations", "16", "--eval-every", "8", "--eval-tokens", "1024", "--save-every", "4",
        "--log-every", "2", "--compile", "off", "--dtype", "fp32", "--device", "cpu"]   # the library's LR and WD rules


def train_cmd(nproc: int = 1, path_form: bool = False) -> list[str]:
    target = [str(REPO / "vibenanochat" / "train.py")] if path_form else ["-m", "vibenanochat.train"]
    return [sys.executable, *target] if nproc == 1 else torchrun_cmd(nproc, *target)


def run(args, nproc=1, path_form=False, check=True, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")    # one thread per process, as torchrun's workers: the same kernels everywhere
    r = subprocess.run(train_cmd(nproc, path_form) + list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if check: assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r




@pytest.fixture(scope="module")
def shards(shakespeare_shards):
    return shakespeare_shards


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    "One uninterrupted single-process run (launched by path, `python vibenanochat/train.py`)."
    logs = tmp_path_factory.mktemp("logs")
    run(ARGS + ["--data-dir", str(shards), "--log-dir", str(logs), "--run-name", "ref"], path_form=True)
    return logs / "ref"


def test_one_process_learns_and_checkpoints(reference):
    ls = run_losses(reference)
    assert len(ls) == 16 and ls[-1] < ls[0] - 0.5, ls
    assert [checkpoint.step_of(c) for c in checkpoint.list_checkpoints(reference)] == [4, 8, 12, 16]
    recs = [json.loads(l) for l in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr_multiplier"] for r in recs if "loss" in r and "event" not in r][-1] < 1 and "lrm" not in recs[0]
    final = reference / "checkpoints" / "step_000016"
    assert {"model.pt", "meta.json", "optim_rank0.pt", "loader_rank0.pt", "tokenizer.json"} <= {p.name for p in final.iterdir()}
    end = json.loads((reference / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["event"] == "end" and end["step"] == 16 and end["val_bpb"] > 0


def underscored(args: list[str]) -> list[str]:
    return ["--" + a[2:].replace("-", "_") if a.startswith("--") else a for a in args]


def test_two_processes_give_the_same_loss_curve(shards, reference, tmp_path):
    # 1 process x 2 accumulation steps == 2 processes x 1: the same rows, the same model (and --seq_len == --seq-len)
    r = run(underscored(ARGS + ["--data-dir", str(shards), "--log-dir", str(tmp_path), "--run-name", "ddp"]), nproc=2)
    two, one = run_losses(tmp_path / "ddp"), run_losses(reference)
    assert len(two) == 16
    assert two == one, (two, one)       # bit for bit: same rows, same kernels, s0/2 + s1/2 == (s0 + s1)/2 exactly
    ck = checkpoint.latest_checkpoint(tmp_path / "ddp")
    assert ck == checkpoint.step_dir(tmp_path / "ddp", 16) and checkpoint.load_meta(ck)["world_size"] == 2
    assert all((ck / f).exists() for f in ("optim_rank0.pt", "optim_rank1.pt", "loader_rank0.pt", "loader_rank1.pt"))


def test_sigkill_then_resume_is_exact(shards, reference, tmp_path):
    args = ARGS + ["--data-dir", str(shards), "--log-dir", str(tmp_path), "--run-name", "killed"]
    p = subprocess.Popen(train_cmd() + args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "killed" / "checkpoints" / "step_000008"
    deadline = time.time() + 240
    while not ck.exists() and p.poll() is None and time.time() < deadline: time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert ck.exists(), "the run never reached its step-8 checkpoint"
    assert not (tmp_path / "killed" / "checkpoints" / "step_000016").exists(), "killed too late to test anything"
    run(args + ["--resume"])
    assert run_losses(tmp_path / "killed") == run_losses(reference)      # bit-identical, steps 1-16


def test_ctrl_c_saves_and_exits_cleanly(shards, tmp_path):
    args = ARGS[:] ; args[args.index("--num-iterations") + 1] = "400"
    args += ["--data-dir", str(shards), "--log-dir", str(tmp_path), "--run-name", "ctrlc", "--log-every", "1", "--save-every", "1000"]
    p = subprocess.Popen(train_cmd() + args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "ctrlc" / "metrics.jsonl"
    deadline = time.time() + 240
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and time.time() < deadline: time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out[-3000:]
    step = len(run_losses(tmp_path / "ctrlc"))
    assert 3 <= step < 400 and (tmp_path / "ctrlc" / "checkpoints" / f"step_{step:06d}" / "model.pt").exists()
    assert "continue with --resume" in out


def one_line_error(r) -> str:
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def test_bad_flags_give_one_line_errors(shards, reference, tmp_path):
    base = ["--data-dir", str(shards), "--log-dir", str(tmp_path)]
    assert "depth must be >= 1" in one_line_error(run(ARGS + base + ["--depth", "0"], check=False))
    assert "not a multiple" in one_line_error(run(ARGS + base + ["--total-batch-size", "500"], check=False))
    assert "no data folder" in one_line_error(run(ARGS + ["--data-dir", str(tmp_path / "nope"), "--log-dir", str(tmp_path)], check=False))
    # a copy of the finished reference run: refuse to start over it, to resume it with another depth, or from a torn file
    shutil.copytree(reference, tmp_path / "ref")
    before = (tmp_path / "ref" / "metrics.jsonl").read_bytes()
    assert "already holds checkpoints" in one_line_error(run(ARGS + base + ["--run-name", "ref"], check=False))
    assert "--depth" in one_line_error(run(ARGS + base + ["--run-name", "ref", "--resume", "--depth", "3"], check=False))
    model = tmp_path / "ref" / "checkpoints" / "step_000016" / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    assert "corrupt or truncated" in one_line_error(run(ARGS + base + ["--run-name", "ref", "--resume"], check=False))
    assert (tmp_path / "ref" / "metrics.jsonl").read_bytes() == before and model.stat().st_size == 1000   # nothing overwritten


def test_divergence_is_one_line_and_saves_nothing(shards, tmp_path):
    "A huge (finite) learning rate: the loss turns NaN at step 2; the run stops with one line before its first checkpoint."
    args = ARGS + ["--matrix-lr", "1e30"]
    r = run(args + ["--data-dir", str(shards), "--log-dir", str(tmp_path), "--run-name", "nan"], check=False)
    last = r.stderr.strip().splitlines()[-1]                 # above it: only the progress bar
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last.startswith("loss became nan at step") and "the last good checkpoint is none" in last
    assert checkpoint.latest_checkpoint(tmp_path / "nan") is None


def test_help_lists_every_train_config_field():
    "The CLI is built from TrainConfig: every field is a flag, shown with its help and default."
    r = subprocess.run([sys.executable, "-m", "vibenanochat.train", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())                      # argparse wraps lines
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}" in text and " ".join(f.metadata["help"].split()) in text, f.name
        assert f"(default: {f.default!r})" in text, f.name
