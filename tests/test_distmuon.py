"""DistMuonAdamW across real processes (torchrun, gloo on CPU) against the single-process MuonAdamW.

Three launches in all (each costs a few seconds of imports): K = 2 and K = 3 (equality, state shards, checkpoint),
then fresh K = 3 processes that resume from the K = 3 checkpoint. The worker is tests/_dist_optim_worker.py.
"""
import json
from pathlib import Path

import pytest
import torch

from conftest import torchrun as launch
from vibenanochat.checkpoint import step_dir

WORKER = Path(__file__).with_name("_dist_optim_worker.py")
STEPS = 4


def torchrun(k: int, out: Path, *extra: str) -> None:
    r = launch(k, WORKER, "--out", out, *extra, env=dict(PYTHONWARNINGS="ignore"))
    (out / f"torchrun{'_resume' if extra else ''}.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f"torchrun with {k} processes failed (log: {out}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"


def results(out: Path, k: int, suffix: str = "") -> list[dict]:
    return [json.loads((out / f"rank{r}{suffix}.json").read_text()) for r in range(k)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    "K -> (output folder, per-rank results); plus the K = 3 resume results under 'resume'."
    out = {}
    for k in (2, 3):
        d = tmp_path_factory.mktemp(f"dist{k}")
        torchrun(k, d)
        out[k] = (d, results(d, k))
    d3 = out[3][0]
    torchrun(3, d3, "--resume", "--foreign", str(step_dir(out[2][0], 2) / "optim_rank0.pt"))
    out["resume"] = results(d3, 3, "_resume")
    return out


@pytest.mark.parametrize("k", [2, 3])
def test_bitwise_equal_to_single_process(runs, k):
    "Same mean gradient in, same bits out: every rank, every step, all defaults (Polar Express, NorMuon, cautious WD)."
    for rank, res in enumerate(runs[k][1]):
        ex = res["exact"]
        assert ex["type"] == "DistMuonAdamW", "make_optimizer must return the distributed optimizer under torchrun"
        assert ex["bitwise"] == [True] * STEPS, f"rank {rank}: parameters differ from MuonAdamW on the mean gradient"
        assert ex["same"] == [True] * STEPS, f"rank {rank}: ranks hold different parameters"


@pytest.mark.parametrize("k", [2, 3])
def test_matches_concatenated_batch(runs, k):
    "Real gradients: the ranks' mean gradient is the concatenated batch's, and the parameters follow it closely."
    for res in runs[k][1]:
        c = res["concat"]
        assert c["grad_rel"][0] <= 5e-6, c["grad_rel"]        # same weights: only the fp32 summation order differs
        assert max(c["param_rel"]) <= 1e-5, c["param_rel"]   # those ulps, amplified by AdamW near eps and Muon's small σ


@pytest.mark.parametrize("k", [2, 3])
def test_state_is_sharded(runs, k):
    "Each rank holds about 1/K of the optimizer state; together exactly the single-process state (+ replicated tiny tensors)."
    ex = [res["exact"] for res in runs[k][1]]
    single, tiny, biggest = ex[0]["single_numel"], ex[0]["tiny_numel"], ex[0]["max_matrix"]
    counts = [e["state_numel"] for e in ex]
    assert sum(counts) == single + (k - 1) * 2 * tiny           # AdamW tiny tensors: two moments on every rank
    for c in counts:
        assert abs(c - single / k) <= biggest, (counts, single)  # off by at most one matrix's momentum
        assert c < 0.7 * single


def test_resume_from_per_rank_state_is_exact(runs):
    "Save every rank's shard, start fresh processes, load, continue: the same bits as the uninterrupted run."
    for rank, res in enumerate(runs["resume"]):
        assert res["resume"]["resumed_equal"], f"rank {rank}: resumed run differs from the uninterrupted one"
        assert res["resume"]["same"]


def test_foreign_world_size_is_refused(runs):
    "A shard saved by a 2-process run, loaded into a 3-process run: one line naming both world sizes."
    for res in runs["resume"]:
        msg = res["resume"]["foreign_error"]
        assert msg and "world size 2" in msg and "has 3" in msg and "\n" not in msg


def test_shard_in_single_process_is_refused(runs):
    "The same check without a process group: a K = 2 shard cannot be loaded by the single-process optimizer."
    from vibenanochat.config import GPTConfig
    from vibenanochat.distmuon import make_optimizer
    from vibenanochat.model import GPT
    model = GPT(GPTConfig.from_depth(2, vocab_size=200, seq_len=32, value_embeds=True, layer_scalars=True))
    opt = make_optimizer(model, depth=2, total_batch_size=2**19)
    sd = torch.load(step_dir(runs[2][0], 2) / "optim_rank1.pt", weights_only=True)
    with pytest.raises(ValueError, match="world size 2 but this run has 1"):
        opt.load_state_dict(sd)
