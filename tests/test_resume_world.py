"""Resuming a run on another number of processes, for real: train CLI runs under torchrun (gloo, CPU, fp32, compile off),
2 → 1 and 1 → 2 processes, against uninterrupted runs: the same losses, the same final weights and optimizer state, the
same data positions, bit for bit."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import vibenanochat.checkpoint as checkpoint
import vibenanochat.distmuon as distmuon
from conftest import REPO, run_losses, torchrun_cmd
from vibenanochat.model import GPT
from vibenanochat.muon import MuonAdamW, muon_adamw_groups

# 512 tokens a step = 2 streams of 4 x 64: one process accumulates 2 micro-steps, two processes 1 each
ARGS = ["--depth", "2", "--seq-len", "64", "--device-batch-size", "4", "--total-batch-size", "512",
        "--num-iterations", "8", "--eval-every", "0", "--eval-tokens", "512", "--save-every", "4",
        "--log-every", "1", "--compile", "off", "--dtype", "fp32", "--device", "cpu"]


def train(nproc: int, *args, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vibenanochat.train"] if nproc == 1 else torchrun_cmd(nproc, "-m", "vibenanochat.train")
    env = dict(os.environ, OMP_NUM_THREADS="1")         # one thread everywhere: the same kernels in every run
    r = subprocess.run(cmd + ARGS + list(map(str, args)), capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    if check: assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def runs(shakespeare_shards, tmp_path_factory):
    "Uninterrupted 8-step runs on 1 and 2 processes (checkpoints at steps 4 and 8)."
    logs = tmp_path_factory.mktemp("logs")
    for n in (1, 2): train(n, "--data-dir", shakespeare_shards, "--log-dir", logs, "--run-name", f"w{n}")
    return logs


def cut_at_step_4(runs, src: str, dst: str):
    "A copy of run `src` as it stood after its step-4 checkpoint (the later one deleted): a run to resume."
    shutil.copytree(runs / src, runs / dst)
    shutil.rmtree(checkpoint.step_dir(runs / dst, 8))
    return runs / dst


def whole_optimizer_state(ckpt) -> dict:
    "The state one process would hold, merged from a checkpoint's optimizer files."
    cfg = checkpoint.model_config(checkpoint.load_meta(ckpt), ckpt)
    with torch.device("meta"): model = GPT(cfg)
    opt = MuonAdamW(muon_adamw_groups(model, depth=cfg.n_layer, total_batch_size=512), compile=False)
    world = checkpoint.load_meta(ckpt)["world_size"]
    return distmuon.merge_shards([checkpoint.load_state(ckpt / checkpoint.optim_file(r)) for r in range(world)], opt)["state"]


def loader_states(ckpt) -> dict:
    "Each data stream's saved position, by stream number."
    world = checkpoint.load_meta(ckpt)["world_size"]
    return {s["rank"]: s for r in range(world) for s in checkpoint.load_state(ckpt / checkpoint.loader_file(r))}


def assert_same_run(a, b):
    "Two runs' losses, final weights, optimizer state and data positions are identical."
    assert run_losses(a) == run_losses(b) and len(run_losses(a)) == 8
    ca, cb = checkpoint.step_dir(a, 8), checkpoint.step_dir(b, 8)
    wa, wb = checkpoint.load_state(ca / checkpoint.MODEL), checkpoint.load_state(cb / checkpoint.MODEL)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = whole_optimizer_state(ca), whole_optimizer_state(cb)
    assert oa.keys() == ob.keys()
    for key in oa:
        for k, v in oa[key].items():
            assert torch.equal(v, ob[key][k]) if isinstance(v, torch.Tensor) else v == ob[key][k], (key, k)
    assert loader_states(ca) == loader_states(cb)                          # the same tokens seen, to the document


def test_one_and_two_processes_agree_bit_for_bit(runs):
    # g0/2 + g1/2 == (g0 + g1)/2 in binary floating point, and every later step is per matrix or per element
    assert_same_run(runs / "w1", runs / "w2")


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_on_another_process_count(runs, shakespeare_shards, before, after):
    resumed = cut_at_step_4(runs, f"w{before}", f"w{before}to{after}")
    r = train(after, "--data-dir", shakespeare_shards, "--log-dir", runs, "--run-name", resumed.name, "--resume")
    assert "resuming from" in r.stdout and checkpoint.load_meta(checkpoint.step_dir(resumed, 8))["world_size"] == after
    assert_same_run(resumed, runs / f"w{before}")       # as if it had never moved
    assert_same_run(resumed, runs / f"w{after}")


def test_three_processes_cannot_split_two_streams(runs, shakespeare_shards):
    resumed = cut_at_step_4(runs, "w2", "w2to3")
    r = train(3, "--data-dir", shakespeare_shards, "--log-dir", runs, "--run-name", resumed.name, "--resume", check=False)
    assert r.returncode != 0 and any("not a multiple" in l for l in r.stderr.splitlines()), r.stderr[-3000:]
    assert checkpoint.latest_checkpoint(resumed) == checkpoint.step_dir(resumed, 4)                # nothing written
