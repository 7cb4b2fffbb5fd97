"""Dataloader throughput: tokens/s and crop % at B=8, T=1024, one process, on the shared corpora.

    python bench/dataloader.py [--batches 300] [--device cpu|cuda]

Prepares each shared corpus into a temporary folder (GPT-2 tokenizer), then times `next(loader)` with the
prefetch thread on (what the trainer sees) and off (the packing work itself). A depth-12 model consumes
about 400k tokens/s on one H100; the loader must out-run that.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import vibenanochat.data as data
from vibenanochat.dataloader import DataLoader
from vibenanochat.tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parents[1]
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
    shared = Path(os.environ.get("VNC_SHARED_DATA", REPO.parent / "shared" / "data"))
    text = shared / "text"
    tok_dir = shared / "tokenizers" / "gpt2"
    enc = get_tokenizer(tok_dir if tok_dir.exists() else "gpt2")
    corpora = {"fineweb-edu sample": text / "fineweb_edu_sample" / "fineweb_edu_sample150.jsonl",
               "tiny shakespeare": text / "tiny_shakespeare_input.txt",
               "war and peace": text / "public_domain" / "war_and_peace_pg2600.txt",
               "all shared text": text}
    print(f"B={a.B} T={a.T} device={a.device} batches={a.batches}; target {TARGET / 1e3:.0f}k tokens/s "
          f"(depth 12 on one H100); torch threads {torch.get_num_threads()}")
    print(f"{'corpus':20s} {'docs':>7s} {'tok/doc':>7s} {'thread tok/s':>13s} {'inline tok/s':>13s} {'crop %':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in corpora.items():
            if not src.exists():
                print(f"{name:20s} absent ({src})")
                continue
            d = Path(tmp) / name.replace(" ", "_")
            m = data.prepare(str(src), d, enc, progress=False)
            docs = m["documents"]["train"]
            threaded, crop = rate(d, a.B, a.T, a.batches, 4, a.device)
            inline, _ = rate(d, a.B, a.T, a.batches, 0, a.device)
            flag = "" if threaded > TARGET else "  BELOW TARGET"
            print(f"{name:20s} {docs:>7,} {m['tokens']['train'] / docs:>7.0f} {threaded:>13,.0f} {inline:>13,.0f} "
                  f"{crop:>7.2f}{flag}")


if __name__ == "__main__":
    main()
