"""A `--vnc-builder` for the side-by-side benchmark that builds exactly what the trainer builds for the benchmark's
precision: the GPT, and `make_optimizer` with Newton–Schulz in the run's dtype (bf16 for `--dtype bf16`, fp32 for an
all-fp32 run, as `trainer.build_model` passes it).

    PYTHONPATH=bench python <peer_bench.py> --vnc-builder peer_builder:build --dtype fp32 ...
"""
import torch

import vibenanochat.distmuon as distmuon
from vibenanochat.config import GPTConfig
from vibenanochat.model import GPT


def build(depth: int, seq_len: int, batch: int, vocab_size: int, dtype: str = "fp32", device: str = "cpu"):
    model = GPT(GPTConfig.from_depth(depth, seq_len=seq_len, vocab_size=vocab_size)).to(device)
    ns_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    opt = distmuon.make_optimizer(model, depth=depth, total_batch_size=batch * seq_len, ns_dtype=ns_dtype)
    return model, opt, False      # the harness wraps the forward in autocast, as the trainer does
