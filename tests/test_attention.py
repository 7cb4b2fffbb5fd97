"""Sliding-window attention by FlexAttention (compiled, as on the GPU training path) against the textbook formula."""
import math

import torch

from vibenanochat.attention import attend, attention_mask, window_attention


def naive_attention(q, k, v, window):
    rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    att = att.masked_fill(~attention_mask(q.size(2), k.size(2), 0, window), float("-inf"))
    return att.softmax(-1) @ v


def test_compiled_flex_window_equals_naive():
    "Compiled FlexAttention (forward: this PyTorch has no CPU backward for it), GQA, windows below, at and above a 128-block."
    torch.manual_seed(0)
    flex = torch.compile(window_attention, dynamic=False)
    q, k, v = torch.randn(2, 8, 384, 32), torch.randn(2, 2, 384, 32), torch.randn(2, 2, 384, 32)
    with torch.no_grad():
        for w in (1, 100, 128, 200):
            ref = naive_attention(q, k, v, w)
            assert (flex(q, k, v, w) - ref).abs().max().item() < 1e-4, w
            assert (attend(q, k, v, w) - ref).abs().max().item() < 1e-4, w       # the CPU path: dense mask through SDPA
