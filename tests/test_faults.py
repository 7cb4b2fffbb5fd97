"""The trainer under faults, with real processes: a dead torchrun, Ctrl-C at any step, a second trainer on the same
folder, learning rates that blow up, torn metrics, other data and a new horizon on --resume, bad shards."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

import vibenanochat.checkpoint as checkpoint
import vibenanochat.data as data
from conftest import REPO, need_asset, torchrun_cmd

ARGS = ["--depth", "2", "--seq-len", "64", "--device-batch-size", "4", "--total-batch-size", "512",
        "--eval-every", "-1", "--eval-tokens", "512", "--compile", "off", "--dtype", "fp32", "--device", "cpu"]
TRAIN = [sys.executable, "-m", "vibenanochat.train"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def args(shards, logs, name, steps, *more) -> list[str]:
    return ARGS + ["--num-iterations", str(steps), "--data-dir", str(shards), "--log-dir", str(logs), "--run-name", name, *map(str, more)]


def run(cmd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def wait_for(cond, what: str, timeout: float = 240):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def steps_logged(run_dir) -> int:
    p = run_dir / "metrics.jsonl"
    return len([l for l in p.read_text().splitlines() if '"loss"' in l and '"event"' not in l]) if p.exists() else 0


def message_lines(stderr: str) -> list[str]:
    "stderr without the progress bar's redraws."
    return [l for l in stderr.replace("\r", "\n").splitlines() if l.strip() and "it/s" not in l and "s/it" not in l and "%|" not in l]


def one_line(r) -> str:
    lines = message_lines(r.stderr)
    assert r.returncode != 0 and len(lines) == 1, (r.returncode, r.stderr[-3000:])
    return lines[0]


def test_workers_stop_when_torchrun_dies(shakespeare_shards, tmp_path):
    "SIGKILL torchrun alone (its workers are not signalled by anyone): the parent-death guard ends both within ~10 s."
    p = subprocess.Popen(torchrun_cmd(2, "-m", "vibenanochat.train", *args(shakespeare_shards, tmp_path, "orphan", 400, "--log-every", 1)),
                         cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: steps_logged(tmp_path / "orphan") >= 1, "the first step")
        workers = psutil.Process(p.pid).children(recursive=True)
        assert len(workers) >= 2, workers
        os.kill(p.pid, signal.SIGKILL); p.wait()
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers outlived torchrun: {alive}"
    finally:
        with pytest.raises(ProcessLookupError): os.killpg(p.pid, signal.SIGKILL)   # nothing of the group is left


def test_ctrl_c_under_torchrun_saves_at_once_and_resumes(shakespeare_shards, tmp_path):
    "Ctrl-C (SIGINT to the whole group) with --log-every 1000: both ranks stop at the same step, save, exit 130 with one line."
    logs = tmp_path / "torchrun"
    cmd = torchrun_cmd(2, "--log-dir", logs, "--redirects", "3", "-m", "vibenanochat.train",
                       *args(shakespeare_shards, tmp_path, "ctrlc", 400, "--log-every", 1000, "--save-every", 1000))
    p = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run_dir = tmp_path / "ctrlc"
    wait_for(lambda: any(run_dir.glob("checkpoints")) or (run_dir / ".lock").exists(), "the run to start")
    time.sleep(8)                                            # a few steps in: metrics are not flushed before step 1000
    os.killpg(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode != 0
    ck = checkpoint.latest_checkpoint(run_dir)
    assert ck is not None, out[-3000:]
    step = checkpoint.step_of(ck)
    assert 1 <= step < 400 and steps_logged(run_dir) == step
    errs = {f.parent.name: f.read_text() for f in logs.rglob("stderr.log")}
    assert set(errs) == {"0", "1"}, errs
    assert [l for l in message_lines(errs["0"])] == [f"interrupted at step {step}: checkpoint {ck} saved; continue with --resume"], errs["0"]
    assert message_lines(errs["1"]) == [], errs["1"]       # only rank 0 speaks
    # the run goes on from there (a shorter horizon: the schedule is rebased, see the last test)
    r = subprocess.run(torchrun_cmd(2, "-m", "vibenanochat.train", *args(shakespeare_shards, tmp_path, "ctrlc", step + 2, "--resume")),
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert steps_logged(run_dir) == step + 2


def test_ctrl_c_one_process_exit_code(shakespeare_shards, tmp_path):
    p = subprocess.Popen(TRAIN + args(shakespeare_shards, tmp_path, "c1", 400, "--log-every", 1000, "--save-every", 1000),
                         cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / "c1" / ".lock").exists(), "the run to start")
    time.sleep(6)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    ck = checkpoint.latest_checkpoint(tmp_path / "c1")
    assert p.returncode == 130 and ck is not None, err[-3000:]
    assert message_lines(err) == [f"interrupted at step {checkpoint.step_of(ck)}: checkpoint {ck} saved; continue with --resume"], err


def test_a_second_trainer_on_the_same_folder_is_refused(shakespeare_shards, tmp_path):
    first = subprocess.Popen(TRAIN + args(shakespeare_shards, tmp_path, "busy", 400, "--save-every", 1, "--log-every", 1),
                             cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: checkpoint.latest_checkpoint(tmp_path / "busy") is not None, "the first checkpoint")
        r = run(TRAIN + args(shakespeare_shards, tmp_path, "busy", 400, "--resume"), timeout=120)
        msg = one_line(r)
        assert r.returncode == 1 and "in use by a running trainer" in msg and f"pid {first.pid} on " in msg, msg
        assert first.poll() is None                          # the first run goes on
    finally:
        first.kill(); first.wait()
    # the lock died with its holder: the run resumes (stale locks cannot exist)
    step = checkpoint.step_of(checkpoint.latest_checkpoint(tmp_path / "busy"))
    r = run(TRAIN + args(shakespeare_shards, tmp_path, "busy", step + 1, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]


def test_bad_rates_are_refused_before_anything_is_written(shakespeare_shards, tmp_path):
    for flag, value in [("--embedding-lr", "inf"), ("--matrix-lr", "nan"), ("--weight-decay", "-1"), ("--warmdown-frac", "1.5")]:
        r = run(TRAIN + args(shakespeare_shards, tmp_path, "bad", 4, "--save-every", 1, flag, value), timeout=120)
        assert r.returncode == 1 and one_line(r).startswith(flag), (flag, r.stderr[-2000:])
    assert not (tmp_path / "bad").exists()


def test_nothing_non_finite_is_ever_saved(shakespeare_shards, tmp_path):
    "A huge finite LR blows the weights up after a few steps: every checkpoint on disk is finite, the message names the last."
    r = run(TRAIN + args(shakespeare_shards, tmp_path, "boom", 12, "--save-every", 1, "--log-every", 1000, "--matrix-lr", "1e30"))
    last = message_lines(r.stderr)[-1]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    found = checkpoint.list_checkpoints(tmp_path / "boom")
    for ck in found:
        state = checkpoint.load_state(ck / checkpoint.MODEL)
        assert all(torch.isfinite(v).all() for v in state.values()), ck
    assert f"the last good checkpoint is {found[-1] if found else 'none'} " in last, last


def test_resume_repairs_a_torn_line_refuses_other_data_and_keeps_the_schedule(shakespeare_shards, tmp_path):
    run_dir = tmp_path / "r"
    r = run(TRAIN + args(shakespeare_shards, tmp_path, "r", 6, "--save-every", 3, "--log-every", 1))
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = run_dir / "metrics.jsonl"
    good = metrics.read_text()
    # an unparseable line in the middle is an error, and nothing is rewritten
    lines = good.splitlines(True)
    metrics.write_text("".join(lines[:2] + ["{oops\n"] + lines[2:]))
    r = run(TRAIN + args(shakespeare_shards, tmp_path, "r", 10, "--resume"))
    assert "line 3 is not JSON" in one_line(r) and metrics.read_text().count("{oops") == 1
    # other data: the same shards in another folder are the same data; a different text is refused unless allowed
    same, other, text = tmp_path / "same", tmp_path / "other", tmp_path / "t.txt"
    shutil.copytree(shakespeare_shards, same)
    text.write_text(need_asset("text/public_domain/anna_karenina_pg1399.txt").read_text(encoding="utf-8")[:150_000])
    data.prepare(str(text), other, tokenizer=data.data_tokenizer(shakespeare_shards), progress=False)
    metrics.write_text(good + '{"step": 7, "loss": 4.1')   # a torn last line: a crash mid-append
    msg = one_line(run(TRAIN + args(other, tmp_path, "r", 10, "--resume")))
    assert "trained on other data" in msg and "--allow-new-data" in msg, msg
    # a new horizon, 6 -> 10 steps, from the finished run, on the copied folder (the same identity)
    r = run(TRAIN + args(same, tmp_path, "r", 10, "--resume", "--log-every", 1))
    assert r.returncode == 0, r.stderr[-3000:]
    lrm = [x["lr_multiplier"] for x in map(json.loads, metrics.read_text().splitlines()) if "loss" in x and "event" not in x]
    assert lrm[:6] == [1, 1, 1, 1, 1, 0.5] and len(lrm) == 10, lrm   # the torn line is gone
    assert lrm[6] == lrm[5], lrm                               # no jump (the new plain schedule would say 1.0 at step 7)
    assert all(b < a for a, b in zip(lrm[6:], lrm[7:])) and lrm[-1] > 0, lrm   # then a warm-down from there
    # --allow-new-data lets the run continue on other data
    r = run(TRAIN + args(other, tmp_path, "r", 11, "--resume", "--allow-new-data"))
    assert r.returncode == 0, r.stderr[-3000:]


def test_a_damaged_shard_is_caught_at_start_up(shakespeare_shards, tmp_path):
    "A truncated validation shard: one line before training, and nothing written (no run folder)."
    bad = tmp_path / "bad"
    shutil.copytree(shakespeare_shards, bad)
    val = bad / json.loads((bad / "manifest.json").read_text())["val_shard"]
    val.write_bytes(val.read_bytes()[: val.stat().st_size // 2])
    msg = one_line(run(TRAIN + args(bad, tmp_path / "logs", "x", 4, "--eval-every", 2)))
    assert str(val) in msg and "damaged" in msg, msg
    assert not (tmp_path / "logs").exists()


SHARED_WORKER = r'''
import sys
from pathlib import Path
import torch.distributed as dist
from vibenanochat import trainer
d = trainer.init_distributed("cpu")
folder = Path(sys.argv[1]) / (f"node{d.rank}" if sys.argv[2] == "apart" else "shared")
folder.mkdir(parents=True, exist_ok=True)
try:
    trainer.check_shared_folder(folder, d)
    line = f"rank {d.rank}: ok"
except ValueError as e:
    line = f"rank {d.rank}: {e}"
(Path(sys.argv[1]) / f"result{d.rank}.txt").write_text(line)   # one file per rank: two processes' prints can interleave
dist.destroy_process_group()
'''


def test_a_run_folder_other_nodes_cannot_see_is_caught(tmp_path):
    "Two processes, as if on two nodes: one folder seen by both passes; a folder per process (not shared) fails on both."
    from conftest import torchrun
    script = tmp_path / "worker.py"
    script.write_text(SHARED_WORKER)
    for mode in ("shared", "apart"):
        r = torchrun(2, script, tmp_path / mode, mode, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        lines = sorted((tmp_path / mode / f"result{k}.txt").read_text() for k in range(2))
        if mode == "shared": assert lines == ["rank 0: ok", "rank 1: ok"], r.stdout
        else: assert len(lines) == 2 and all("is not on a filesystem shared by all nodes: point --log-dir at shared storage" in l for l in lines), r.stdout
    assert not (tmp_path / "shared" / "shared" / ".shared-check").exists()   # the token is removed


def test_core_every_needs_a_core_evaluation(shakespeare_shards, tmp_path):
    "The trainer does not import the evals chapter: CORE during training is passed in, and asking for it without one is refused."
    from vibenanochat.trainer import TrainConfig, train
    with pytest.raises(ValueError, match="--core-every needs a CORE evaluation"):
        train(TrainConfig(depth=2, core_every=5, data_dir=str(shakespeare_shards), log_dir=str(tmp_path), device="cpu"))
    assert not any(tmp_path.iterdir())
