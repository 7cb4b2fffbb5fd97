"""Optimizer step time for the depth 4/8/12 GPT shapes: Muon vs AdamW for the matrices, 1 process vs 2, and the share of a training step.

    python bench/optim.py                          # depths 4 8 12 on the CPU, 1 and 2 processes (gloo)
    python bench/optim.py --device cuda            # one GPU: compiled kernels, bf16 orthogonalisation; 1 process
    python bench/optim.py --depths 4 --repeat 5

"Muon" is the optimizer the trainer uses (`make_optimizer`: Muon for the block matrices, AdamW for embedding,
head and scalars). "AdamW" is the same object with the block matrices moved to an AdamW group, i.e. the cost of
plain AdamW everywhere. Gradients are random (the step's cost does not depend on their values). The 2-process
figures come from `DistMuonAdamW` in processes spawned here (gloo on CPU; each gets half the CPU threads); the
time is the slowest rank's. The share is step / (step + forward-backward time of one 2^19-token step), with the
forward-backward time per token measured on --tokens tokens in this process.
"""
import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vibenanochat.config import GPTConfig
from vibenanochat.distmuon import DistMuonAdamW
from vibenanochat.model import GPT
from vibenanochat.muon import MuonAdamW, muon_adamw_groups

REFERENCE_BATCH = 2**19


def sync(device: torch.device) -> None:
    if device.type == "cuda": torch.cuda.synchronize()


def build(depth: int, device: torch.device, matrix: str, dist_opt: bool):
    "A GPT of this depth with random gradients, and its optimizer (matrices under Muon or AdamW)."
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(depth)).to(device)
    for p in model.parameters(): p.grad = torch.randn_like(p) * 1e-3
    groups = muon_adamw_groups(model, depth=depth, total_batch_size=REFERENCE_BATCH)
    if matrix == "adamw": groups[0] = dict(name="matrix", kind="adamw", params=groups[0]["params"], lr=3e-3)
    return model, (DistMuonAdamW(groups) if dist_opt else MuonAdamW(groups))


def time_steps(opt, device: torch.device, repeat: int) -> float:
    "Median seconds per optimizer step, after one warm-up step (compilation, allocation)."
    opt.step(); sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); opt.step(); sync(device); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fwd_bwd_per_token(depth: int, device: torch.device, tokens: int, repeat: int) -> float:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(depth, seq_len=tokens)).to(device)
    x = torch.randint(0, 50257, (1, tokens), device=device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for i in range(repeat + 1):
        sync(device); t0 = time.perf_counter()
        with ctx: loss = model(x, x)
        loss.backward(); sync(device)
        if i: times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return statistics.median(times) / tokens


def _worker(rank: int, world: int, port: int, depth: int, matrix: str, repeat: int, threads: int, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    _, opt = build(depth, torch.device("cpu"), matrix, dist_opt=True)
    dist.barrier()
    t = time_steps(opt, torch.device("cpu"), repeat)
    out[rank] = t
    dist.barrier()
    dist.destroy_process_group()


def two_process_time(depth: int, matrix: str, repeat: int, port: int) -> float:
    with mp.Manager() as manager:
        out = manager.dict()
        threads = max(1, torch.get_num_threads() // 2)
        mp.spawn(_worker, args=(2, port, depth, matrix, repeat, threads, out), nprocs=2, join=True)
        return max(out.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="timed steps per measurement (median)")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens of the forward-backward measurement")
    ap.add_argument("--skip-two", action="store_true", help="skip the 2-process measurements")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    two = not a.skip_two and device.type == "cpu"
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} CPU threads")
          + ("" if two else "; 2-process figures skipped (CPU/gloo only)"))
    head = f"{'depth':>5} {'params':>7} {'matrix':>7} {'1 proc s':>9} {'2 procs s':>10} {'fwd+bwd s/2^19 tok':>19} {'share (1 proc)':>15}"
    print(head); print("-" * len(head))
    for i, depth in enumerate(a.depths):
        model, _ = build(depth, device, "muon", dist_opt=False)
        n = sum(p.numel() for p in model.parameters()); del model
        fb = fwd_bwd_per_token(depth, device, a.tokens, a.repeat) * REFERENCE_BATCH
        for j, matrix in enumerate(("muon", "adamw")):
            _, opt = build(depth, device, matrix, dist_opt=False)
            t1 = time_steps(opt, device, a.repeat); del opt
            t2 = two_process_time(depth, matrix, a.repeat, 29500 + 10 * i + j) if two else float("nan")
            print(f"{depth:>5} {n / 1e6:6.1f}M {matrix:>7} {t1:9.3f} {t2:10.3f} {fb:19.1f} {t1 / (t1 + fb):15.2%}", flush=True)


if __name__ == "__main__":
    main()
