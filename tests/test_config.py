"""The config's counts are the real model's: parameters as the model holds them, FLOPs per token as PyTorch's
FLOP counter measures them on a real forward + backward; GPU times are estimates at the one assumed MFU."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vibenanochat.config import ASSUMED_MFU, GPTConfig, count_params, estimate_seconds, flops_per_token
from vibenanochat.model import GPT

SHAPES = [dict(),                                                            # plain MHA
          dict(vocab_size=1000),                                             # a padded vocabulary (1000 -> 1024 rows)
          dict(n_kv_head=1, value_embeds=True, layer_scalars=True)]          # GQA, value embeddings and their gates, scalars


def _config(kw) -> GPTConfig:
    return GPTConfig.from_depth(2, **{"vocab_size": 512, "seq_len": 128, **kw})


@pytest.mark.parametrize("kw", SHAPES, ids=["mha", "padded_vocab", "gqa_ve_scalars"])
def test_count_params_is_what_the_model_holds(kw):
    cfg = _config(kw)
    model = GPT(cfg)
    p = count_params(cfg)
    assert sum(t.numel() for t in model.parameters()) == p["total"]
    assert sum(t.numel() for t in model.blocks.parameters()) == p["blocks"]
    assert p["N"] == p["blocks"] + model.lm_head.weight.numel()


@pytest.mark.parametrize("kw", SHAPES, ids=["mha", "padded_vocab", "gqa_ve_scalars"])
def test_flops_per_token_equals_the_flop_counter_on_a_real_step(kw):
    "Full causal attention computed as matmuls (the math SDPA backend) and the plain loss: every matmul is counted."
    cfg = _config(kw)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx, tgt = torch.randint(0, cfg.vocab_size, (2, 2, cfg.seq_len))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        F.cross_entropy(model(idx).flatten(0, 1), tgt.flatten()).backward()
    measured = fc.get_total_flops() / idx.numel()
    assert measured == flops_per_token(cfg)          # exact: the formula counts every weight and QKᵀ, AV over the window
    assert model.estimate_flops() == flops_per_token(cfg)


def test_estimate_seconds_is_flops_over_peak_times_the_assumed_mfu():
    assert ASSUMED_MFU == 0.40                       # the one MFU every GPU estimate in the book uses
    peak = 989e12
    assert math.isclose(estimate_seconds(peak * 0.4 * 3600, peak), 3600)
    assert math.isclose(estimate_seconds(1e18, peak, mfu=0.5), 1e18 / (0.5 * peak))
    for bad in (dict(mfu=0), dict(mfu=1.5), dict(peak_flops=0)):
        args = dict(flops=1e18, peak_flops=peak) | bad
        with pytest.raises(ValueError) as e: estimate_seconds(**args)
        assert "\n" not in str(e.value)
