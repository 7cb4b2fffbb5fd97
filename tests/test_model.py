"""The GPT outside its chapter: the depth-12 count, overfitting real text, checkpoints loadable without pickle."""
import math

import torch

from conftest import need_asset
from vibenanochat.checkpoint import load_model, save_model
from vibenanochat.config import GPTConfig, count_params, depth_table
from vibenanochat.model import GPT


def test_depth12_parameter_count_matches_table():
    with torch.device("meta"):
        m = GPT(GPTConfig.from_depth(12))
    n = sum(p.numel() for p in m.parameters())
    row = next(r for r in depth_table() if r["depth"] == 12)
    assert n == row["total"] == 162_201_600
    assert count_params(m.config)["N"] == row["N"]


def test_overfits_a_fixed_batch_of_real_text():
    text = need_asset("text/tiny_shakespeare_input.txt").read_bytes()[:20_000]
    data = torch.tensor(list(text), dtype=torch.long)
    B, T = 4, 64
    xb = torch.stack([data[i * 2000:i * 2000 + T + 1] for i in range(B)])
    torch.manual_seed(0)
    m = GPT(GPTConfig.from_depth(2, vocab_size=256, seq_len=T))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3, betas=(0.8, 0.95))   # plain Adam: memorise one batch
    first = None
    for step in range(300):
        loss = m(xb[:, :-1], xb[:, 1:])
        first = first or loss.item()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    assert abs(first - math.log(256)) < 0.05      # starts uniform
    assert loss.item() < 0.5                     # and memorises the batch


def test_checkpoint_is_plain_tensors(tmp_path):
    m = GPT(GPTConfig.from_depth(2, vocab_size=100, seq_len=16, value_embeds=True))
    save_model(m, tmp_path, {"step": 3, "tokenizer": "gpt2"})
    state = torch.load(tmp_path / "model.pt", weights_only=True)      # no pickled objects inside
    assert set(state) == set(m.state_dict())
    m2, meta = load_model(tmp_path / "model.pt")
    x = torch.randint(0, 100, (1, 16))
    assert torch.equal(m2(x), m.eval()(x)) and meta["tokenizer"] == "gpt2"
