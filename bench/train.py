"""Training throughput: tokens/s and MFU for depths 4/8/12 on the current device, torch.compile on and off.

    python bench/train.py                 # defaults per device (CUDA: seq 2048-class shapes; CPU: tiny)
    python bench/train.py --depths 12 --seq-len 1024 --batch 32 --steps 20

Runs the trainer's own step (autocast, Muon/AdamW optimizer, gradient on one micro-batch) on random
tokens, so the figure is the model+optimizer speed without data loading (see bench/dataloader.py).
"""
import argparse
import time

import torch

import vibenanochat.distmuon as distmuon
import vibenanochat.plumbing as plumbing
import vibenanochat.trainer as trainer
from vibenanochat.config import GPTConfig
from vibenanochat.model import GPT


def bench(depth: int, seq_len: int, batch: int, steps: int, compile: bool, device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(depth, seq_len=seq_len)).to(device)
    opt = distmuon.make_optimizer(model, depth=depth, total_batch_size=batch * seq_len)
    fwd = torch.compile(model, dynamic=False) if compile else model
    x = torch.randint(0, 50257, (batch, seq_len + 1), device=device)
    def step():
        with trainer.autocast(device, dtype): loss = fwd(x[:, :-1], x[:, 1:])
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(3): step()                      # warm-up (and compilation)
    if device.type == "cuda": torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    if device.type == "cuda": torch.cuda.synchronize()
    tok_s = steps * batch * seq_len / (time.perf_counter() - t0)
    mfu = 100 * model.estimate_flops() * tok_s / trainer.peak_flops(device)
    return tok_s, mfu


def main():
    device = plumbing.process_device("auto")
    cuda = device.type == "cuda"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12])
    p.add_argument("--seq-len", type=int, default=1024 if cuda else 256)
    p.add_argument("--batch", type=int, default=32 if cuda else 2)
    p.add_argument("--steps", type=int, default=20 if cuda else 3)
    p.add_argument("--compile", choices=["both", "on", "off"], default="both" if cuda else "off")
    a = p.parse_args()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    name = torch.cuda.get_device_name() if cuda else f"{device.type} ({torch.get_num_threads()} CPU threads)"
    print(f"device {name}, dtype {str(dtype).removeprefix('torch.')}, seq {a.seq_len}, batch {a.batch}, {a.steps} timed steps")
    print(f"{'depth':>5} {'compile':>7} {'tok/s':>12} {'MFU %':>7}")
    for depth in a.depths:
        for comp in ([False, True] if a.compile == "both" else [a.compile == "on"]):
            tok_s, mfu = bench(depth, a.seq_len, a.batch, a.steps, comp, device, dtype)
            print(f"{depth:>5} {'on' if comp else 'off':>7} {tok_s:>12,.0f} {mfu:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
