"""Shared test helpers."""
from pathlib import Path

import pytest

from vibenanochat.assets import asset

REPO = Path(__file__).resolve().parents[1]


def need_asset(name: str) -> Path:
    "Local path of a data asset (see vibenanochat.assets); skip the test, naming the asset, when it cannot be had."
    try:
        return asset(name)
    except FileNotFoundError as e:
        pytest.skip(f"needs the downloadable asset {name}: {e}")


# ---------------------------------------------------------------- shared helpers: processes, tokenizers, checkpoints
import inspect
import os
import subprocess
import sys


def torchrun_cmd(nproc: int, *args) -> list[str]:
    "`python -m torch.distributed.run --standalone --nproc_per_node=NPROC ARGS...` (args: a script or `-m module`, then its flags)."
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]


def torchrun(nproc: int, *args, env: dict | None = None, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    "Run `torchrun_cmd(nproc, *args)` to the end, output captured; one CPU thread per process (gloo on a shared CPU), plus `env`."
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(torchrun_cmd(nproc, *args), env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def gpt2():
    "GPT-2's tokenizer, from its encoder.json + vocab.bpe asset (the test skips, naming the asset, when they cannot be had)."
    from vibenanochat.tokenizer import get_tokenizer
    return get_tokenizer(need_asset("tokenizers/gpt2"))


def small_bpe(vocab_size: int = 320, name: str = "testbpe"):
    "A small BPE trained on the docstrings of Python's builtins: needs no data files, trains in well under a second."
    from vibenanochat.tokenizer import train_tokenizer
    text = "\n\n".join(inspect.getdoc(o) or "" for o in (str, list, dict, set, int, float, bytes, open, print, sorted, zip, map))
    return train_tokenizer([text] * 3, vocab_size=vocab_size, name=name)


def tiny_gpt(vocab_size: int = 300, seed: int = 0, depth: int = 2, seq_len: int = 16, spread: bool = True, **config):
    "A small random GPT in eval mode; `spread` moves it off the identity init so its logits differ (greedy ties would be noise)."
    import torch
    from vibenanochat.config import GPTConfig
    from vibenanochat.model import GPT
    torch.manual_seed(seed)
    m = GPT(GPTConfig.from_depth(depth, vocab_size=vocab_size, seq_len=seq_len, **config))
    if spread:
        with torch.no_grad():
            for b in m.blocks:
                b.attn.c_proj.weight.normal_(std=0.1); b.mlp.c_proj.weight.normal_(std=0.1)
            m.lm_head.weight.normal_(std=0.5)
    return m.eval()


def tiny_checkpoint(ckpt_dir: Path, enc, step: int = 1, seed: int = 0, depth: int = 1, seq_len: int = 64, spread: bool = True,
                    tokenizer_json: bool = True, meta_tokenizer: str = "tokenizer.json") -> Path:
    """A `tiny_gpt` for `enc` saved into the checkpoint folder `ckpt_dir` (e.g. `checkpoint.step_dir(run, 20)`), its meta
    recording `step` and `meta_tokenizer`, with `enc` as tokenizer.json beside the weights unless `tokenizer_json` is False."""
    import vibenanochat.checkpoint as checkpoint
    from vibenanochat.tokenizer import save_tokenizer
    m = tiny_gpt(enc.n_vocab, seed, depth, seq_len, spread)
    checkpoint.save_model(m, ckpt_dir, dict(step=step, tokenizer=meta_tokenizer))
    if tokenizer_json: save_tokenizer(enc, Path(ckpt_dir) / checkpoint.TOKENIZER)
    return Path(ckpt_dir)


@pytest.fixture(scope="session")
def shakespeare_shards(tmp_path_factory):
    "Tiny Shakespeare as shards, with a 2,048-token BPE trained on it (a small head keeps CPU steps fast)."
    import vibenanochat.data as data
    import vibenanochat.tokenizer as tok
    text = need_asset("text/tiny_shakespeare_input.txt")
    enc = tok.train_tokenizer(data.read_local(text), 2048)
    out = tmp_path_factory.mktemp("data") / "shakespeare"
    data.prepare(str(text), out, tokenizer=enc, progress=False)
    return out


def run_losses(run_dir: Path) -> list[float]:
    "The per-step training losses a run wrote to its metrics.jsonl."
    import json
    recs = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r and "event" not in r]
