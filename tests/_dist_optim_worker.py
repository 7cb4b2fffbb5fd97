"""Worker for tests/test_distmuon.py, started by torchrun (gloo, CPU): DistMuonAdamW against single-process MuonAdamW.

Each rank trains a small GPT on its own micro-batches and writes what it saw to OUT/rank{r}_{phase}.json:
- "exact": gradients rounded to a grid on which fp32 sums are exact (any summation order gives the same bits), all
  optimizer defaults; after every step the parameters must equal, bit for bit, MuonAdamW stepping on the mean gradient.
  The run saves a checkpoint after SAVE_AT steps through `checkpoint.save_checkpoint` (all ranks: the model and one
  optimizer shard per rank, in OUT/checkpoints/step_000002/) and its final parameters.
- "concat": real gradients, a reference that steps on the concatenated batch (cautious decay off, AdamW eps 1e-4:
  see the distmuon chapter for why); relative differences of the mean gradient and of the parameters per step.
- "--resume": fresh processes load the checkpoint, continue to STEPS and compare with the uninterrupted run; they
  also try to load a shard saved with another world size (--foreign) and record the error.
"""
import argparse
import copy
import json
import math
from pathlib import Path

import torch
import torch.distributed as dist

import vibenanochat.checkpoint as checkpoint
from vibenanochat.config import GPTConfig
from vibenanochat.distmuon import REPLICATE_BELOW, make_optimizer
from vibenanochat.model import GPT
from vibenanochat.muon import MuonAdamW, apply_schedules, muon_adamw_groups, state_numel

STEPS, SAVE_AT, MICRO, T, VOCAB = 4, 2, 2, 32, 200   # vocab 200 pads to 256 rows: uneven row shards on 3 ranks
KW = dict(depth=2, total_batch_size=2**19)


def build() -> GPT:
    "The same model on every rank, moved off the identity init (there some gradients are exactly 0 but come out as noise)."
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(2, vocab_size=VOCAB, seq_len=T, value_embeds=True, layer_scalars=True))
    with torch.no_grad():
        for p in model.parameters(): p.add_(torch.randn_like(p) * 0.02)
    return model


def global_batch(step: int, world: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (world * MICRO, T + 1), generator=torch.Generator().manual_seed(1000 + step))


def local_loss(model, step, world, rank):
    x = global_batch(step, world)[rank * MICRO:(rank + 1) * MICRO]
    return model(x[:, :-1], x[:, 1:])


def round_grads_(model) -> None:
    "Round each gradient to a grid of 2^-21 of the largest |g| over all ranks: sums of up to 4 such values are exact."
    for p in model.parameters():
        m = p.grad.abs().max().reshape(1)
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        s = 2.0 ** (math.ceil(math.log2(max(m.item(), 1e-30))) - 21)
        p.grad.copy_(torch.round(p.grad / s) * s)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def same_on_all_ranks(model) -> bool:
    ok = True
    for p in model.parameters():
        q = p.detach().clone(); dist.broadcast(q, 0)
        ok &= torch.equal(p, q)
    return ok


def exact_step(model, opt, step, world, rank, ref=None, ropt=None) -> None:
    "One step on rounded local gradients; the optional reference steps on their mean (exact: any order, same bits)."
    for o in (opt, ropt):
        if o is not None: apply_schedules(o, step, STEPS)
    local_loss(model, step, world, rank).backward()
    round_grads_(model)
    if ref is not None:
        for p, q in zip(model.parameters(), ref.parameters()):
            g = p.grad.clone(); dist.all_reduce(g); q.grad = g / world
    opt.step(); opt.zero_grad(set_to_none=True)
    if ropt is not None: ropt.step(); ropt.zero_grad(set_to_none=True)


def run_exact(out: Path, world: int, rank: int) -> dict:
    model = build(); ref = copy.deepcopy(model)
    opt = make_optimizer(model, **KW)
    ropt = MuonAdamW(muon_adamw_groups(ref, **KW))
    res = dict(type=type(opt).__name__, state_numel=state_numel(opt), single_numel=state_numel(ropt),
               tiny_numel=sum(p.numel() for g in opt.param_groups if g["kind"] == "adamw" for p in g["params"] if p.numel() < REPLICATE_BELOW),
               max_matrix=max(p.numel() for p in model.param_groups()["matrix"]), bitwise=[], same=[])
    for step in range(STEPS):
        exact_step(model, opt, step, world, rank, ref, ropt)
        res["bitwise"].append(all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters())))
        res["same"].append(same_on_all_ranks(model))
        if step + 1 == SAVE_AT: checkpoint.save_checkpoint(out, SAVE_AT, model, opt, loaders=[], meta={})
    if rank == 0: torch.save(model.state_dict(), out / "final.pt")
    return res


def run_concat(world: int, rank: int) -> dict:
    model = build(); ref = copy.deepcopy(model)
    # fp32 Newton–Schulz on both sides: the comparison measures fp32 summation order, which bf16 rounding would amplify
    opt = make_optimizer(model, cautious=False, ns_dtype=torch.float32, **KW)
    ropt = MuonAdamW(muon_adamw_groups(ref, cautious=False, **KW), ns_dtype=torch.float32)
    for o in (opt, ropt):
        for g in o.param_groups:
            if g["kind"] == "adamw": g["eps"] = 1e-4
    res = dict(grad_rel=[], param_rel=[])
    for step in range(STEPS):
        for o in (opt, ropt): apply_schedules(o, step, STEPS)
        local_loss(model, step, world, rank).backward()
        x = global_batch(step, world)
        ref(x[:, :-1], x[:, 1:]).backward()
        mean = [p.grad.clone() for p in model.parameters()]
        for g in mean: dist.all_reduce(g); g.div_(world)
        res["grad_rel"].append(max(rel(g, q.grad) for g, q in zip(mean, ref.parameters())))
        opt.step(); opt.zero_grad(set_to_none=True)
        ropt.step(); ropt.zero_grad(set_to_none=True)
        res["param_rel"].append(max(rel(p, q) for p, q in zip(model.parameters(), ref.parameters())))
    return res


def run_resume(out: Path, world: int, rank: int, foreign: Path | None) -> dict:
    model = build()
    ck = checkpoint.latest_checkpoint(out)
    assert ck == checkpoint.step_dir(out, SAVE_AT) and checkpoint.load_meta(ck)["world_size"] == world
    model.load_state_dict(checkpoint.load_state(ck / checkpoint.MODEL))
    opt = make_optimizer(model, **KW)
    res = {}
    if foreign is not None:
        try:
            opt.load_state_dict(torch.load(foreign, weights_only=True)); res["foreign_error"] = None
        except ValueError as e:
            res["foreign_error"] = str(e)
    opt.load_state_dict(checkpoint.load_state(ck / checkpoint.optim_file(rank)))
    for step in range(SAVE_AT, STEPS):
        exact_step(model, opt, step, world, rank)
    final = torch.load(out / "final.pt", weights_only=True)
    res["resumed_equal"] = all(torch.equal(p, final[n]) for n, p in model.named_parameters())
    res["same"] = same_on_all_ranks(model)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--foreign", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    if args.resume:
        results = dict(resume=run_resume(args.out, world, rank, args.foreign))
    else:
        results = dict(exact=run_exact(args.out, world, rank), concat=run_concat(world, rank))
    (args.out / f"rank{rank}{'_resume' if args.resume else ''}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()
