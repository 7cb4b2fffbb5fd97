"""The GPU default path on the CPU: bf16 autocast + torch.compile of model (the loss inside its graph) and optimizer — trains, never
recompiles after the first step, tracks the fp32 loss, gives loadable checkpoints and the same curve on 2 processes;
the fused loss and the compiled optimizer against their plain references."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import vibenanochat.trainer as trainer
from conftest import REPO, need_asset, run_losses
from vibenanochat.config import GPTConfig
from vibenanochat.distmuon import make_optimizer
from vibenanochat.model import GPT, softcap_cross_entropy
from vibenanochat.muon import adamw_update, apply_schedules, muon_update

STEPS = 24
ARGS = dict(depth=2, seq_len=64, device_batch_size=4, total_batch_size=512, num_iterations=STEPS, eval_every=-1,
            eval_tokens=1024, log_every=1, device="cpu", window_pattern="SL")   # the library's LR and WD rules


def cli_flags(**kw) -> list[str]:
    return [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]




@pytest.fixture(scope="module")
def shards(shakespeare_shards):
    return shakespeare_shards


@pytest.fixture(scope="module")
def fp32_run(shards, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    trainer.train(trainer.TrainConfig(**ARGS, dtype="fp32", compile="off", data_dir=str(shards), log_dir=str(logs), run_name="fp32"))
    return logs / "fp32"


@pytest.fixture(scope="module")
def compiled_run(shards, tmp_path_factory):
    "The GPU defaults (bf16 autocast, compile on) in this process, counting dynamo's graphs before every step."
    from torch._dynamo.utils import counters
    logs, graphs = tmp_path_factory.mktemp("logs"), []
    real = trainer.muon.apply_schedules

    def counting(opt, step, *a, **kw):                  # observe only: record, then the real schedules
        graphs.append(counters["stats"]["unique_graphs"])
        return real(opt, step, *a, **kw)

    torch._dynamo.reset()
    trainer.muon.apply_schedules = counting
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # as each torchrun worker (OMP_NUM_THREADS=1): same kernels, same rounding
    try:
        trainer.train(trainer.TrainConfig(**ARGS, dtype="bf16", compile="on", data_dir=str(shards), log_dir=str(logs), run_name="bf16"))
    finally:
        trainer.muon.apply_schedules = real
        torch.set_num_threads(threads)
    graphs.append(counters["stats"]["unique_graphs"])
    return logs / "bf16", graphs


def test_bf16_compile_trains_without_recompiling(compiled_run):
    run_dir, graphs = compiled_run
    ls = run_losses(run_dir)
    assert len(ls) == STEPS and ls[-1] < ls[0] - 0.5, ls
    # graphs[s] = graphs compiled before step s: step 0 compiles model, loss kernels and one optimizer kernel per shape
    assert graphs[1] > graphs[0], graphs                 # (the counter is process-wide: earlier tests may have compiled)
    assert graphs[1] == graphs[-1], f"recompiled after the first step (graphs before each step: {graphs})"


def test_bf16_compile_tracks_fp32(compiled_run, fp32_run):
    bf16, fp32 = run_losses(compiled_run[0]), run_losses(fp32_run)
    assert abs(bf16[0] - fp32[0]) < 0.02, (bf16[0], fp32[0])                       # the same model and batch at step 1
    diff = max(abs(a - b) for a, b in zip(bf16, fp32))
    print(f"bf16+compile vs fp32 eager: max |Δloss| {diff:.4f} over {STEPS} steps (final {bf16[-1]:.4f} vs {fp32[-1]:.4f})")
    assert diff < 0.05, f"bf16+compile strays {diff:.3f} from fp32: {bf16} vs {fp32}"


def test_compiled_checkpoint_loads_in_generate_and_evals(compiled_run, tmp_path):
    run_dir = compiled_run[0]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-m", "vibenanochat.generate", "--checkpoint", str(run_dir), "--prompt", "ROMEO:",
                        "--temperature", "0", "--max_length", "12", "--device", "cpu"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:") and len(r.stdout) > len("ROMEO:\n"), r.stderr[-2000:]
    bundle = need_asset("eval_bundle_mini")                # committed with the repository
    r = subprocess.run([sys.executable, "-m", "vibenanochat.evals", "--checkpoint", str(run_dir / "checkpoints" / f"step_{STEPS:06d}"),
                        "--tasks", "copa", "--max-per-task", "8", "--bundle", str(bundle), "--out", str(tmp_path / "core")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "core" / "core_eval.json").read_text())
    assert rep["step"] == STEPS and rep["tasks"]["copa"]["examples"] == 8, rep


def test_two_processes_compiled_give_the_same_curve(shards, compiled_run, tmp_path):
    "1 process x 2 accumulation steps == 2 processes (gloo) x 1, both bf16 + compile."
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vibenanochat.train",
           *cli_flags(**ARGS, dtype="bf16", compile="on", data_dir=shards, log_dir=tmp_path, run_name="ddp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    two, one = run_losses(tmp_path / "ddp"), run_losses(compiled_run[0])
    assert len(two) == STEPS
    rel = max(abs(a - b) / b for a, b in zip(two, one))
    print(f"2 processes vs 1, bf16+compile: max relative loss difference {rel:.2e}")
    assert two == one, (rel, two, one)     # same kernels on one thread each: the same curve, bit for bit


def plain_loss(x, w, tgt, V, cap, reduction="mean"):
    return F.cross_entropy(cap * torch.tanh((x @ w.mT)[:, :V].float() / cap), tgt, ignore_index=-1, reduction=reduction)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fused_loss_equals_plain(compiled):
    "Several chunks and a ragged last one, padding rows, ignored targets, per-row upstream weights, fp32 and bf16."
    torch.manual_seed(0)
    x, w = torch.randn(333, 48, requires_grad=True), torch.randn(640, 48, requires_grad=True)
    tgt = torch.randint(0, 600, (333,)); tgt[::5] = -1
    row_w = torch.rand(333)
    for red in ("mean", "sum", "none"):
        a = plain_loss(x, w, tgt, 600, 15.0, red)
        b = softcap_cross_entropy(x, w, tgt, 600, 15.0, reduction=red, chunk_rows=64, compiled=compiled)
        weigh = (lambda l: (l * row_w).sum()) if red == "none" else (lambda l: l)
        ga, gb = torch.autograd.grad(weigh(a), (x, w)), torch.autograd.grad(weigh(b), (x, w))
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        for p, q in zip(gb, ga): torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    with torch.no_grad():                                 # evaluation: loss only
        torch.testing.assert_close(softcap_cross_entropy(x, w, tgt, 600, 15.0, chunk_rows=64, compiled=compiled),
                                   plain_loss(x, w, tgt, 600, 15.0), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):     # the matmuls in bf16, the rest in fp32, as the plain path
        a, b = plain_loss(x, w, tgt, 600, 15.0), softcap_cross_entropy(x, w, tgt, 600, 15.0, chunk_rows=64, compiled=compiled)
        ga, gb = torch.autograd.grad(a, (x, w)), torch.autograd.grad(b, (x, w))
    assert abs(a.item() - b.item()) < 1e-3 and gb[1].dtype == torch.float32
    for p, q in zip(gb, ga): assert ((p - q).abs().max() / q.abs().max()).item() < 2e-2


def test_model_loss_is_the_fused_loss_of_its_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(2, vocab_size=500, seq_len=32))       # padded to 512 head rows
    with torch.no_grad(): model.lm_head.weight.normal_(std=0.5)             # far from uniform: the softcap matters
    idx, tgt = torch.randint(0, 500, (3, 32)), torch.randint(0, 500, (3, 32))
    tgt[0, :5] = -1
    ref = F.cross_entropy(model(idx).view(-1, 500), tgt.view(-1), ignore_index=-1, reduction="none").view(3, 32)
    torch.testing.assert_close(model(idx, tgt, loss_reduction="none"), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(idx, tgt), ref.sum() / (tgt != -1).sum(), rtol=1e-5, atol=1e-5)


def test_compiled_optimizer_equals_eager():
    "The default (compiled on this CPU) optimizer takes the same steps as the eager kernels, schedules moving."
    runs = []
    for compile in (True, False):
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_depth(2, vocab_size=200, seq_len=32, value_embeds=True, layer_scalars=True))
        # fp32 Newton–Schulz: compiled and eager kernels round bf16 differently, and the difference compounds over steps
        opt = make_optimizer(model, depth=2, total_batch_size=2**19, compile=compile, ns_dtype=torch.float32)
        assert (opt._muon_kernel is muon_update) != compile and (opt._adamw_kernel is adamw_update) != compile
        for step in range(4):
            apply_schedules(opt, step, 4)
            x = torch.randint(0, 200, (4, 33), generator=torch.Generator().manual_seed(step))
            model(x[:, :-1], x[:, 1:]).backward()
            opt.step(); opt.zero_grad(set_to_none=True)
        runs.append([p.detach() for p in model.parameters()])
    # rounding differs (fused kernels) and four Newton–Schulz steps amplify it (a cautious-decay sign can flip on an entry
    # near 0): compare whole tensors; a wrong formula would be off by O(1)
    for (name, p), q in zip(model.named_parameters(), runs[0]):
        assert ((q - p).norm() / p.norm()).item() < 2e-3, name


def test_compiled_model_takes_the_loss_into_its_one_graph():
    "fullgraph=True: a graph break (the loss run outside the compiled graph) is an error; values and gradients as eager."
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(1, vocab_size=300, seq_len=32))        # 320 head rows: padding is cropped
    with torch.no_grad():
        model.lm_head.weight.normal_(std=0.5)                              # far from uniform: the softcap matters
        for b in model.blocks: b.mlp.c_proj.weight.normal_(std=0.02)       # gradients reach the blocks
    idx, tgt = torch.randint(0, 300, (4, 32)), torch.randint(0, 300, (4, 32))
    tgt[1, :7] = -1
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    params = [model.lm_head.weight, model.wte.weight, model.blocks[0].mlp.c_fc.weight]
    ref, got = model(idx, tgt), compiled(idx, tgt)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():                                                  # evaluation: per-row losses, no gradients
        torch.testing.assert_close(compiled(idx, tgt, loss_reduction="none"), model(idx, tgt, loss_reduction="none"),
                                   rtol=1e-5, atol=1e-5)
