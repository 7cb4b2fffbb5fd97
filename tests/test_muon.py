"""MuonAdamW in one process: exact resume from a saved state, one-line errors, scaling rules, no recompiles."""
import math

import pytest
import torch

from vibenanochat.config import GPTConfig
from vibenanochat.distmuon import DistMuonAdamW, make_optimizer
from vibenanochat.model import GPT
from vibenanochat.muon import MuonAdamW, adamw_update, apply_schedules, muon_update, orthogonalize

torch.set_num_threads(1)
CFG = dict(vocab_size=200, seq_len=32, value_embeds=True, layer_scalars=True)


def batch(step: int) -> torch.Tensor:
    return torch.randint(0, 200, (4, 33), generator=torch.Generator().manual_seed(step))


def train(model, opt, steps: range, total: int) -> None:
    for step in steps:
        apply_schedules(opt, step, total)
        x = batch(step)
        model(x[:, :-1], x[:, 1:]).backward()
        opt.step(); opt.zero_grad(set_to_none=True)


def fresh(seed: int = 0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_depth(2, **CFG))
    return model, make_optimizer(model, depth=2, total_batch_size=2**19)


def test_resume_from_saved_state_is_exact(tmp_path):
    a, opt_a = fresh()
    train(a, opt_a, range(5), 5)
    b, opt_b = fresh()
    train(b, opt_b, range(2), 5)
    torch.save(b.state_dict(), tmp_path / "model.pt")
    torch.save(opt_b.state_dict(), tmp_path / "optim_rank0.pt")
    c, opt_c = fresh(seed=1)                                  # different weights: everything must come from the files
    c.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    opt_c.load_state_dict(torch.load(tmp_path / "optim_rank0.pt", weights_only=True))
    train(c, opt_c, range(2, 5), 5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def one_line_error(f, *needles: str) -> str:
    with pytest.raises(ValueError) as e: f()
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


def test_bad_input_one_line_errors():
    model, opt = fresh()
    one_line_error(lambda: MuonAdamW([dict(kind="muon", params=[model.wte.weight, model.resid_lambdas])]),
                   "1-D parameter", "AdamW group")
    one_line_error(lambda: MuonAdamW([dict(kind="sgd", params=[model.wte.weight])]), "'sgd'")
    one_line_error(lambda: MuonAdamW([dict(kind="muon", params=[model.blocks[0].attn.c_q.weight], ns_steps=7)]), "ns_steps")
    sd = opt.state_dict()
    one_line_error(lambda: opt.load_state_dict(dict(sd, world_size=4)), "world size 4", "has 1")
    one_line_error(lambda: opt.load_state_dict({"state": {}}), "not a MuonAdamW")
    missing = dict(sd, state={k: v for k, v in sd["state"].items() if not k.startswith("g0.")})   # the Muon buckets
    one_line_error(lambda: opt.load_state_dict(missing), "no entry for Muon matrices")
    other, _ = fresh()
    other_opt = make_optimizer(other, depth=2, total_batch_size=2**19, normuon=False)
    one_line_error(lambda: opt.load_state_dict(other_opt.state_dict()), "lacks 'second'")
    small = GPT(GPTConfig.from_depth(2, vocab_size=100, seq_len=32, value_embeds=True, layer_scalars=True))
    one_line_error(lambda: make_optimizer(small, depth=2, total_batch_size=2**19).load_state_dict(sd), "shape")


def test_scaling_rules_and_groups():
    model = GPT(GPTConfig.from_depth(3, vocab_size=200, seq_len=32))
    opt = make_optimizer(model, depth=8, total_batch_size=2**21)
    lr = {g["name"]: g["initial_lr"] for g in opt.param_groups}
    s = 4 ** -0.15                                     # the measured rule: (B / 2^19)^gamma per group, gamma = -0.15 for Muon,
    assert math.isclose(lr["matrix"], 0.02 * s) and math.isclose(lr["embedding"], 0.3 * s * s)   # 2 gamma for the embedding
    assert lr["unembedding"] == 0.004                  # and 0 for the head: its tuned rate at every batch
    muon = opt.param_groups[0]
    assert muon["kind"] == "muon" and muon["initial_weight_decay"] == 0.2   # flat below depth 12
    big = make_optimizer(GPT(GPTConfig.from_depth(2, vocab_size=200, seq_len=32)), depth=24, total_batch_size=2**19)
    assert math.isclose(big.param_groups[0]["initial_weight_decay"], 0.2 * (12 / 24) ** 2)  # (12/depth)^2 above it
    assert math.isclose(big.param_groups[0]["initial_lr"], 0.02)                           # the tuned constants at 2^19
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if g["kind"] == "adamw")
    assert "value_embeds" not in lr and "resid_lambdas" not in lr           # empty groups are left out
    assert type(opt) is MuonAdamW and not isinstance(opt, DistMuonAdamW)    # no process group


def test_step_without_gradients_and_bf16_orthogonalisation():
    model, opt = fresh()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()                                                  # no backward: zero gradients, no crash
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))   # weight decay still acts
    G = torch.randn(4, 96, 64)
    o32, o16 = orthogonalize(G), orthogonalize(G, dtype=torch.bfloat16)
    assert o16.dtype == torch.bfloat16 and (o16.float() - o32).abs().max() < 0.05   # the GPU path, run on CPU


def test_changing_hyperparameters_does_not_recompile():
    "The hyper-parameters are 0-D tensors, so a compiled Muon step traces once however the schedules move them."
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    step = torch.compile(muon_update, backend=counting_backend, fullgraph=True, dynamic=False)
    p, buf, second = torch.randn(2, 16, 8), torch.zeros(2, 16, 8), torch.zeros(2, 16, 1)
    for lr, mu, wd in ((0.02, 0.85, 0.1), (0.01, 0.9, 0.05), (0.001, 0.95, 0.0)):
        step(p, torch.randn(2, 16, 8), buf, second, torch.tensor(mu), torch.tensor(lr), torch.tensor(wd), torch.tensor(0.95))
    assert len(graphs) == 1, f"{len(graphs)} graphs: a hyper-parameter change recompiled the step"
    graphs.clear()
    astep = torch.compile(adamw_update, backend=counting_backend, fullgraph=True, dynamic=False)
    w, m, v = torch.randn(8, 4), torch.zeros(8, 4), torch.zeros(8, 4)
    for t, lr in ((1, 0.3), (2, 0.2), (3, 0.0)):
        astep(w, torch.randn(8, 4), m, v, *(torch.tensor(float(x)) for x in (t, lr, 0.8, 0.95, 1e-10, 0.0)))
    assert len(graphs) == 1, f"{len(graphs)} graphs: an AdamW hyper-parameter change recompiled the step"
    # the real thing on this CPU: the optimizer compiles its kernels by default (inductor, as on a GPU); after the
    # first step (one graph per bucket and parameter shape) moving schedules compile nothing more
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    model, opt = fresh()
    assert opt._muon_kernel is not muon_update and opt._adamw_kernel is not adamw_update, "optimizer not compiled on CPU"
    train(model, opt, range(1), 6)
    warm = dict(counters["stats"])
    train(model, opt, range(1, 6), 6)
    assert counters["stats"]["unique_graphs"] == warm["unique_graphs"] > 0, (warm, dict(counters["stats"]))
