"""Learning-rate and weight-decay sweeps on Tiny Shakespeare at laptop scale, and Muon vs a tuned AdamW baseline.

    python bench/lr_sweep.py prepare                    # corpus BPE, pieces cut at line breaks, last 10 % held out
    python bench/lr_sweep.py sweep                      # the (depth, batch) x LR-multiplier grid, the WD and per-group sweeps
    python bench/lr_sweep.py compare                    # defaults vs AdamW at 3 LRs, depth 4, 4,096-token batches
    python bench/lr_sweep.py report                     # the tables and the fitted exponent, from the CSV

Every run goes through the library's trainer (`vibenanochat.trainer.train`), one process on the CPU, and appends one
row to the results CSV (depth, batch, tokens, group, multiplier, lr, wd, val_bpb, seed, seconds) as soon as it
ends, so an interrupted sweep keeps what it measured and a rerun skips rows already there. `mult` multiplies the
learning rate(s) of `group`: for exp `lr`/`wd` relative to the depth-12 constants, for exp `group` relative to the
one-exponent rule (every rate x batch_lr_scale(B)), for exp `group2` relative to the per-group rule (group_lr_scales);
`lr` is the resulting absolute rate of that group (the Muon rate for `all` and for the library's `defaults`).
Validation is the last 10 % of the text, never trained on.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

import vibenanochat.data as data
import vibenanochat.muon as muon
import vibenanochat.tokenizer as tok
import vibenanochat.trainer as trainer
from vibenanochat.config import REFERENCE_BATCH, batch_lr_scale, group_lr_scales

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CSV_PATH = ROOT / "nbs" / "lr_sweep_results.csv"
FIELDS = ["exp", "depth", "batch", "tokens", "steps", "optimizer", "group", "mult", "lr", "wd", "val_bpb", "seed", "seconds"]
REF = dict(matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.004, scalar_lr=0.5, weight_decay=0.2)


def shakespeare_text(path: str | None) -> str:
    "The corpus: an explicit path, else the library's asset look-up (VNC_DATA_DIR, then the repo's data/)."
    if path: return Path(path).read_text(encoding="utf-8")
    from vibenanochat.assets import asset
    return asset("text/tiny_shakespeare_input.txt").read_text(encoding="utf-8")


def line_pieces(text: str, chars: int) -> list[str]:
    "Cut text at line breaks into pieces of about `chars` characters (line breaks kept)."
    pieces, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line); n += len(line)
        if n >= chars: pieces.append("".join(cur)); cur, n = [], 0
    if cur: pieces.append("".join(cur))
    return pieces


def prepare(out: Path, text_path: str | None = None, tokenizer: str = "bpe", vocab: int = 4096, seq_len: int = 256,
            holdout: float = 0.1) -> dict:
    """Tokenized shards of Tiny Shakespeare: train = the first 90 %, val = the last 10 %, both cut at line breaks into
    pieces of about 0.9·T tokens. Pieces must fit a row: the loader packs whole documents best-fit into rows of T+1
    tokens and crops what does not fit, so 4·T-token pieces would train on their first quarter only."""
    text = shakespeare_text(text_path)
    cut = text.rfind("\n", 0, int(len(text) * (1 - holdout))) + 1
    train_text, val_text = text[:cut], text[cut:]
    enc = tok.train_tokenizer(line_pieces(train_text, 10_000), vocab, name="shakespeare_bpe") if tokenizer == "bpe" \
        else tok.get_tokenizer(tokenizer)
    bpt = len(train_text.encode()) / len(enc.encode_ordinary(train_text))
    chars = int(0.25 * seq_len * bpt)
    jl = out.with_suffix(".train.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    jl.write_text("".join(json.dumps({"text": p}) + "\n" for p in line_pieces(train_text, chars)), encoding="utf-8")
    m = data.prepare(str(jl), out, enc, val_docs=1, progress=False)
    jl.unlink()
    # the writer holds out one random training piece; validate on the held-out tail instead
    val_docs = [np.asarray(tok.encode_doc(enc, p), dtype=data.token_dtype(enc)) for p in line_pieces(val_text, chars)]
    info = data.write_shard(out / m["val_shard"], val_docs)
    man = json.loads((out / "manifest.json").read_text())
    man["documents"]["val"], man["tokens"]["val"] = info["docs"], info["tokens"]
    man["shards"][-1] = dict(info, file=m["val_shard"])
    man["source"] = "tiny_shakespeare (first 90 %; val = last 10 %)"
    (out / "manifest.json").write_text(json.dumps(man, indent=1))
    print(f"{out}: {enc.name} ({enc.n_vocab} tokens, {bpt:.2f} bytes/token), train {man['tokens']['train']:,} tokens "
          f"in {man['documents']['train']} pieces, val {info['tokens']:,} tokens")
    return man


# ---------------------------------------------------------------- one run
def adamw_everywhere(lr: float, wd: float = 0.1, betas=(0.9, 0.95)):
    "An optimizer factory with the trainer's signature: nanoGPT-style AdamW on every parameter (wd on 2-D tensors only)."
    def make(model, *, depth, total_batch_size, **_):
        mats = [p for p in model.parameters() if p.dim() >= 2]     # nanoGPT decays every matrix, embeddings included
        rest = [p for p in model.parameters() if p.dim() < 2]
        groups = [dict(name="decay", kind="adamw", params=mats, lr=lr, betas=betas, eps=1e-8, weight_decay=wd),
                  dict(name="no_decay", kind="adamw", params=rest, lr=lr, betas=betas, eps=1e-8, weight_decay=0.0)]
        return muon.MuonAdamW([g for g in groups if g["params"]])
    return make


def run(data_dir: Path, depth: int, batch: int, tokens: int, seed: int = 42, dtype: str = "fp32", optimizer=None,
        log_dir: str = "/tmp/lr_sweep_logs", **lrs) -> dict:
    "Train once with the library's trainer; returns its summary plus wall seconds."
    import shutil
    import vibenanochat.distmuon as distmuon
    name = f"d{depth}_b{batch}_{os.getpid()}_{time.time_ns() % 10**9}"   # unique: runs may go in parallel
    shutil.rmtree(Path(log_dir) / name, ignore_errors=True)
    seq = 256
    dbs = min(16, batch // seq) if batch <= 16384 else batch // seq // 4   # <= 4 streams: a small corpus has few row groups
    tc = trainer.TrainConfig(depth=depth, seq_len=seq, device_batch_size=dbs, total_batch_size=batch,
                             num_iterations=max(1, tokens // batch), eval_every=-1, eval_tokens=2**16, log_every=16,
                             run_name=name, log_dir=log_dir, data_dir=str(data_dir), dtype=dtype, compile="off",
                             device="cpu", seed=seed, **lrs)
    saved = distmuon.make_optimizer
    if optimizer is not None: distmuon.make_optimizer = optimizer
    t = time.time()
    try: s = trainer.train(tc)
    finally: distmuon.make_optimizer = saved
    shutil.rmtree(Path(log_dir) / name, ignore_errors=True)
    return dict(s, seconds=time.time() - t, steps=tc.num_iterations)


ALIAS = dict(value_embeds="embedding", resid_lambdas="scalars", x0_lambdas="scalars")   # the library's rate they share


def absolute_groups(mults: dict[str, float], wd: float | None = None):
    "Optimizer factory: the library's groups with each group's LR set to reference constant × mults[group] (absolute), Muon WD = wd."
    ref = dict(matrix="matrix_lr", embedding="embedding_lr", unembedding="unembedding_lr", value_embeds="embedding_lr")
    def make(model, *, depth, total_batch_size, ns_dtype=None, **_):
        groups = muon.muon_adamw_groups(model, depth=depth, total_batch_size=total_batch_size)
        for g in groups:
            key = ref.get(g["name"])
            base = REF[key] if key else (REF["scalar_lr"] * (0.01 if g["name"] == "resid_lambdas" else 1))
            g["lr"] = base * mults.get(g["name"], mults.get(ALIAS.get(g["name"], ""), mults.get("all", 1.0)))
            if g["kind"] == "muon" and wd is not None: g["weight_decay"] = wd
        return muon.MuonAdamW(groups, ns_dtype=ns_dtype or torch.float32)   # the trainer passes its run's precision
    return make


# ---------------------------------------------------------------- the results file
def read_rows(path: Path = CSV_PATH) -> list[dict]:
    if not path.exists(): return []
    with open(path, newline="") as f: return list(csv.DictReader(f))


def _key(r: dict) -> tuple:
    return (r["exp"], int(r["depth"]), int(r["batch"]), int(r["tokens"]), r["optimizer"], r["group"],
            round(float(r["mult"]), 6), round(float(r["lr"]), 8), round(float(r["wd"]), 6), int(r["seed"]))


def measure(data_dir: Path, exp: str, depth: int, batch: int, tokens: int, group: str = "all", mult: float = 1.0,
            wd: float = 0.2, base: dict | None = None, optimizer: str = "muon", lr: float | None = None, seed: int = 42,
            dtype: str = "bf16", path: Path = CSV_PATH) -> dict:
    """One row: `optimizer` = muon (library groups, absolute LRs = reference × multipliers), adamw (everywhere, `lr`),
    or defaults (the library's own rule, nothing overridden). `base` = multipliers of the other groups."""
    row = dict(exp=exp, depth=depth, batch=batch, tokens=tokens, steps=tokens // batch, optimizer=optimizer, group=group,
               mult=mult, lr=0.0, wd=wd, val_bpb=0.0, seed=seed, seconds=0.0)
    mults = dict(base or {}); mults[group] = mult
    if exp == "group":      # `mult` relative to the one-exponent rule: every group at batch_lr_scale(B), this one x mult
        s = batch_lr_scale(batch)
        mults = {k: v * s for k, v in mults.items()}; mults.setdefault("all", s)
    elif exp == "group2":   # `mult` relative to the per-group rule (group_lr_scales), this group x mult
        rule = {("scalars" if k == "scalar" else k): v for k, v in group_lr_scales(batch).items()}
        mults = {k: rule[k] * mults.get(k, 1.0) for k in rule}
    key = dict(embedding="embedding_lr", unembedding="unembedding_lr", scalars="scalar_lr").get(group, "matrix_lr")
    if optimizer == "adamw": row["lr"] = lr
    elif optimizer == "defaults": row["lr"] = REF["matrix_lr"] * batch_lr_scale(batch)   # the rule's Muon rate
    else: row["lr"] = REF[key] * mults.get(group if key != "matrix_lr" else "matrix", mults.get("all", 1.0))
    done = {_key(r): r for r in read_rows(path)}
    if _key(row) in done: return done[_key(row)]
    opt = absolute_groups(mults, wd) if optimizer == "muon" else adamw_everywhere(lr, wd) if optimizer == "adamw" else None
    s = run(data_dir, depth, batch, tokens, seed=seed, dtype=dtype, optimizer=opt)
    row.update(val_bpb=round(s["val_bpb"], 5), seconds=round(s["seconds"], 1))
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if new: w.writeheader()
        w.writerow(row)
    print(f"== {exp} d{depth} B{batch} {tokens} tok {optimizer} {group} x{mult:g} wd {wd:g}: val bpb {row['val_bpb']:.4f} "
          f"({row['seconds']:.0f}s)", flush=True)
    return row


def lr_scan(data_dir, exp, depth, batch, tokens, mults, wd=0.2, group="all", base=None, extend=1, **kw) -> float:
    "Measure each multiplier; while the best sits at an edge, add the next factor-2 step beyond it (at most `extend`)."
    mults = sorted(mults)
    res = {m: float(measure(data_dir, exp, depth, batch, tokens, group, m, wd, base, **kw)["val_bpb"]) for m in mults}
    for _ in range(extend):
        best = min(res, key=res.get)
        if best == min(res): nxt = best / 2
        elif best == max(res): nxt = best * 2
        else: break
        res[nxt] = float(measure(data_dir, exp, depth, batch, tokens, group, nxt, wd, base, **kw)["val_bpb"])
    return min(res, key=res.get)


GROUP_SWEEP = (("unembedding", (2, 0.5, 0.25)), ("embedding", (2, 4)))   # in the order they ran (biggest expected information first)
ADAMW_LRS = (1e-3, 3e-3, 1e-2)   # nanoGPT's small-model rate and two half-decades above it
TOKENS = 2**19   # every sweep run sees 0.52 M training tokens (about 1.9 passes over the training text)


def sweep(data_dir: Path, only: str = "") -> None:
    """The runs behind nbs/lr_sweep_results.csv, in this order; every finished run is already in the CSV, so a rerun
    resumes. (The committed table was measured with these runs spread over a few one-thread processes.)"""
    def want(name): return not only or name in only.split(",")
    if want("lr"):      # every LR multiplied together, weight decay at the reference 0.2
        for d, b, ms in ((4, 4096, (1, 2, 4)), (2, 4096, (0.5, 1, 2, 4)), (2, 65536, (1, 2, 4)), (2, 16384, (2, 4))):
            for m in ms: measure(data_dir, "lr", d, b, TOKENS, "all", m, 0.2)
    if want("adamw"):   # the baseline: AdamW everywhere at three LRs
        for lr in ADAMW_LRS: measure(data_dir, "compare", 4, 4096, TOKENS, optimizer="adamw", lr=lr, mult=0, wd=0.1)
    if want("wd"):      # absolute Muon weight decay at depth 2 (the old rule gave 7.2 there)
        for wd in (0.0, 7.2): measure(data_dir, "wd", 2, 4096, TOKENS, "all", 1.0, wd)
    if want("old"):     # the old rule at the key point: LRs x sqrt(4096/2^19), WD 0.2 x (12/4)^2
        measure(data_dir, "old_rule", 4, 4096, TOKENS, "all", math.sqrt(4096 / REFERENCE_BATCH), 1.8)
    if want("group"):   # one AdamW group at a time, x mult relative to the one-exponent rule (the others at it), depth 4
        for g, ms in GROUP_SWEEP:
            for m in ms: measure(data_dir, "group", 4, 4096, TOKENS, g, m, 0.2)
    if want("compare"): compare(data_dir)   # the defaults under the per-group rule (the AdamW rows are already there)
    if want("depth6"):  # the per-group rule at depth 6 (half the tokens): the defaults, then the head's rate x2 and x0.5
        measure(data_dir, "group2", 6, 4096, TOKENS // 2, "per_group", 1.0, 0.2, optimizer="defaults")
        for m in (2, 0.5): measure(data_dir, "group2", 6, 4096, TOKENS // 2, "unembedding", m, 0.2)
    if want("seed"):    # a second seed of the key comparison: the defaults and the best AdamW rate
        measure(data_dir, "seed", 4, 4096, TOKENS, "per_group", batch_lr_scale(4096), 0.2, optimizer="defaults", seed=43)
        measure(data_dir, "seed", 4, 4096, TOKENS, optimizer="adamw", lr=3e-3, mult=0, wd=0.1, seed=43)


def compare(data_dir: Path, depth: int = 4, batch: int = 4096, tokens: int = TOKENS) -> dict:
    "The library's defaults (nothing overridden) vs AdamW everywhere at three LRs: same model, data, schedule, tokens."
    from vibenanochat.config import depth_wd_scale
    # group "per_group": the per-group rule (group_lr_scales); the first defaults row ("all") had one exponent for all
    ours = float(measure(data_dir, "compare", depth, batch, tokens, "per_group", optimizer="defaults",
                         mult=batch_lr_scale(batch), wd=REF["weight_decay"] * depth_wd_scale(depth))["val_bpb"])
    adam = {lr: float(measure(data_dir, "compare", depth, batch, tokens, optimizer="adamw", lr=lr, mult=0, wd=0.1)["val_bpb"])
            for lr in ADAMW_LRS}
    best = min(adam, key=adam.get)
    print(f"depth {depth}, T 256, {batch:,}-token batches, {tokens:,} tokens, held-out bits per byte:")
    for lr, v in adam.items(): print(f"  AdamW lr {lr:g}: {v:.4f}{'  <- best' if lr == best else ''}")
    print(f"  library defaults (Muon + AdamW): {ours:.4f}  = {ours / adam[best]:.3f} x the best AdamW")
    return dict(defaults=ours, adamw=adam, ratio=ours / adam[best])


def report(path: Path = CSV_PATH) -> None:
    "Print every LR curve and its best grid multiplier."
    rows = [r for r in read_rows(path) if r["exp"] == "lr" and r["group"] == "all"]
    pts = {}
    for r in rows: pts.setdefault((int(r["depth"]), int(r["batch"])), {})[float(r["mult"])] = float(r["val_bpb"])
    for (d, b), c in sorted(pts.items()):
        print(f"depth {d} batch {b:>6}: " + "  ".join(f"x{m:g} {v:.3f}" for m, v in sorted(c.items()))
              + f"   best x{min(c, key=c.get):g}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["prepare", "sweep", "compare", "report"])
    p.add_argument("--data-dir", default="data/shakespeare_bpe4k")
    p.add_argument("--text", default=None, help="Tiny Shakespeare path (default: the library's asset look-up)")
    p.add_argument("--only", default="", help="sweep parts: lr,adamw,wd,old,group,compare,depth6,seed (default: all)")
    a = p.parse_args()
    d = Path(a.data_dir)
    if a.what == "prepare": prepare(d, a.text)
    elif a.what == "sweep": sweep(d, a.only)
    elif a.what == "compare": compare(d)
    else: report()


if __name__ == "__main__":
    main()
