"""Dataloader throughput: tokens/s and crop % at B=8, T=1024, one process, on the project's corpora.

    python bench/dataloader.py [--batches 300] [--device cpu|cuda]

Prepares each corpus found through the asset resolver (Tiny Shakespeare always; the FineWeb-Edu sample and the
two public-domain novels when they are on this machine, e.g. in a folder listed in VNC_DATA_DIR) into a
temporary folder (GPT-2 tokenizer; books cut into pieces, the data CLI's default), then times `next(loader)`
with the prefetch thread on (what the trainer sees) and off (the packing work itself). A depth-12 model
consumes about 400k tokens/s on one H100; the loader must out-run that.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

import vibenanochat.assets as assets
import vibenanochat.data as data
from vibenanochat.dataloader import DataLoader
from vibenanochat.tokenizer import get_tokenizer

TARGET = 400_000  # tokens/s a depth-12 model trains at on one H100


def rate(d: Path, B: int, T: int, n: int, prefetch: int, device: str) -> tuple[float, float]:
    dl = DataLoader(d, B, T, prefetch=prefetch, device=device)
    next(dl)  # the first batch pays for the buffer fill and the thread start
    if device.startswith("cuda"): torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        x, y = next(dl)
    if device.startswith("cuda"): torch.cuda.synchronize()
    secs = time.perf_counter() - t
    crop = dl.stats()["crop_pct"]
    dl.close()
    return n * B * T / secs, crop


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=1024)
    a = p.parse_args()
    enc = get_tokenizer("gpt2")
    names = {"fineweb-edu sample": "text/fineweb_edu_sample/fineweb_edu_sample150.jsonl",
             "tiny shakespeare": "text/tiny_shakespeare_input.txt",
             "war and peace": "text/public_domain/war_and_peace_pg2600.txt",
             "anna karenina": "text/public_domain/anna_karenina_pg1399.txt"}
    corpora = {k: assets.find_local(n) for k, n in names.items()}
    corpora["tiny shakespeare"] = assets.asset(names["tiny shakespeare"])  # committed: always there (or downloaded)
    corpora["all of them"] = [p for p in corpora.values() if p is not None]
    print(f"B={a.B} T={a.T} device={a.device} batches={a.batches}; target {TARGET / 1e3:.0f}k tokens/s "
          f"(depth 12 on one H100); torch threads {torch.get_num_threads()}")
    print(f"{'corpus':20s} {'docs':>7s} {'tok/doc':>7s} {'thread tok/s':>13s} {'inline tok/s':>13s} {'crop %':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in corpora.items():
            if src is None:
                print(f"{name:20s} absent ({names[name]} is not on this machine)")
                continue
            d = Path(tmp) / name.replace(" ", "_")
            m = data.prepare([str(p) for p in src] if isinstance(src, list) else str(src), d, enc, progress=False)
            docs = m["documents"]["train"]
            threaded, crop = rate(d, a.B, a.T, a.batches, 4, a.device)
            inline, _ = rate(d, a.B, a.T, a.batches, 0, a.device)
            flag = "" if threaded > TARGET else "  BELOW TARGET"
            print(f"{name:20s} {docs:>7,} {m['tokens']['train'] / docs:>7.0f} {threaded:>13,.0f} {inline:>13,.0f} "
                  f"{crop:>7.2f}{flag}")


if __name__ == "__main__":
    main()
