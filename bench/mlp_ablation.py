"""ReLU² against GELU and SwiGLU in the MLP, at equal parameters and FLOPs, on the same Tiny Shakespeare batches.

    python bench/mlp_ablation.py                  # 3 activations x 2 seeds, writes nbs/mlp_ablation.csv
    python bench/mlp_ablation.py --steps 50       # a quick smoke run (writes the CSV too: pass --out elsewhere)

Only the MLP changes between runs. Each run builds the library's GPT (`GPTConfig.from_depth`), replaces every
block's MLP by the variant, re-runs the library's initialisation with the same seed (so attention, embeddings and
head start identical), and trains with the library's optimizer and schedule (`MuonAdamW` with the default groups of
`muon_adamw_groups`, `apply_schedules`), in fp32 on one CPU process. Batches are random windows of a 2,048-token BPE
trained on the text; a seed fixes both the initialisation and the batch order, so runs with the same seed see the
same tokens in the same order. The last 10 % of the text is held out; the validation loss is the mean over the same
fixed held-out windows at every evaluation. One row per (run, evaluation step) is written to the CSV:
activation, seed, step, train_loss (mean over the steps since the last row), val_loss, seconds.

Equal parameters: ReLU² and GELU use Linear(C → 4C) and Linear(4C → C). SwiGLU has three matrices (gate, up, down),
so its hidden width is 8C/3 rounded down to a multiple of 8 (the gate and the up projection share one Linear(C → 2h),
which Muon orthogonalises as one matrix); its parameter count and FLOPs are printed next to the others.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import vibenanochat.muon as muon
import vibenanochat.plumbing as plumbing
import vibenanochat.tokenizer as tok
from vibenanochat.assets import asset
from vibenanochat.config import GPTConfig
from vibenanochat.mlp import MLP
from vibenanochat.model import GPT

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ["activation", "seed", "step", "train_loss", "val_loss", "seconds"]


class GeluMLP(MLP):
    "The library's MLP with GELU (tanh approximation, as in GPT-2) in place of ReLU²."
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class SwiGLUMLP(nn.Module):
    "SwiGLU: c_proj(silu(gate(x)) * up(x)), hidden width 8C/3 (to a multiple of 8) so the parameters match 8C²."
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.hidden = h = (8 * cfg.n_embd // 3) // 8 * 8
        self.c_fc = nn.Linear(cfg.n_embd, 2 * h, bias=False)    # gate and up in one matrix: the library's init covers it
        self.c_proj = nn.Linear(h, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.c_proj(F.silu(gate) * up)


VARIANTS = {"relu2": MLP, "gelu": GeluMLP, "swiglu": SwiGLUMLP}


def build(activation: str, cfg: GPTConfig, seed: int) -> GPT:
    "The library's GPT with every MLP replaced by `activation`'s, initialised by the library from `seed`."
    torch.manual_seed(seed)
    model = GPT(cfg)
    for b in model.blocks: b.mlp = VARIANTS[activation](cfg)
    torch.manual_seed(seed)
    model.init_weights()
    return model


def mlp_params(model: GPT) -> int:
    return sum(p.numel() for b in model.blocks for p in b.mlp.parameters())


def tokens(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    "(train, val) token ids of Tiny Shakespeare under a BPE of `vocab` tokens trained on the training 90 %."
    text = asset("text/tiny_shakespeare_input.txt").read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    enc = tok.train_tokenizer([text[:cut]], vocab)
    as_ids = lambda s: torch.tensor(enc.encode_ordinary(s), dtype=torch.long)
    return as_ids(text[:cut]), as_ids(text[cut:])


def windows(ids: torch.Tensor, starts: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(T + 1)
    w = ids[idx]
    return w[:, :-1], w[:, 1:]


def run(activation: str, seed: int, cfg: GPTConfig, train: torch.Tensor, val: torch.Tensor, steps: int, B: int,
        every: int, writer) -> float:
    model = build(activation, cfg, seed)
    opt = muon.MuonAdamW(muon.muon_adamw_groups(model, depth=cfg.n_layer, total_batch_size=B * cfg.seq_len),
                         compile=False, ns_dtype=torch.float32)      # fp32 throughout, as an fp32 trainer run
    T = cfg.seq_len
    g = torch.Generator().manual_seed(seed)                      # the batch order: the same for every activation
    vg = torch.Generator().manual_seed(1234)                     # the held-out windows: the same for every run
    val_x, val_y = windows(val, torch.randint(len(val) - T - 1, (4 * B,), generator=vg), T)
    t0, acc, n = time.time(), 0.0, 0
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                vl = sum(model(val_x[i:i + B], val_y[i:i + B]).item() for i in range(0, len(val_x), B)) / (len(val_x) // B)
            model.train()
            row = dict(activation=activation, seed=seed, step=step, train_loss=round(acc / n, 5) if n else "",
                       val_loss=round(vl, 5), seconds=round(time.time() - t0, 1))
            writer(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            acc, n = 0.0, 0
        if step == steps: return vl
        muon.apply_schedules(opt, step, steps)
        x, y = windows(train, torch.randint(len(train) - T - 1, (B,), generator=g), T)
        loss = model(x, y)
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        acc, n = acc + loss.item(), n + 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=25, help="evaluate every this many steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--activations", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "nbs" / "mlp_ablation.csv"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    train, val = tokens(a.vocab)
    cfg = GPTConfig.from_depth(a.depth, vocab_size=a.vocab, seq_len=a.seq)
    print(f"depth {a.depth}, width {cfg.n_embd}, seq {a.seq}, batch {a.batch}x{a.seq} tokens, {a.steps} steps; "
          f"{len(train):,} train / {len(val):,} val tokens; torch threads {a.threads}")
    for act in a.activations:
        m = build(act, cfg, 0)
        print(f"{act:>7}: MLP parameters {mlp_params(m):,}, total {sum(p.numel() for p in m.parameters()):,}")
    rows, t0 = [], time.time()
    def write(row):
        rows.append(row)
        buf = io.StringIO()                                      # rewritten after every row: a stopped run keeps what it has
        w = csv.DictWriter(buf, FIELDS, lineterminator="\n"); w.writeheader(); w.writerows(rows)
        plumbing.atomic_write(a.out, buf.getvalue())
    for seed in a.seeds:
        for act in a.activations:
            final = run(act, seed, cfg, train, val, a.steps, a.batch, a.every, write)
            print(f"== {act} seed {seed}: final val loss {final:.4f} ({time.time() - t0:.0f} s so far)", flush=True)
    print(f"total {time.time() - t0:.0f} s on {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
