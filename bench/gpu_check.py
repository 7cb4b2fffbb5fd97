"""The GPU check: does the default training path (bf16 autocast, torch.compile, fused loss, compiled optimizer,
FlexAttention windows) run, how fast, and does resume reproduce a run — on one CUDA GPU in at most ~8 minutes.

    python bench/gpu_check.py                # on a machine with CUDA; without one it says so and exits 0
    python bench/gpu_check.py --cpu-smoke    # every section at toy sizes on the CPU (checks the script, not the GPU)

Sections: device and versions; fused loss and FlexAttention against their references (values and gradients);
bf16 + compile tokens/s, MFU and peak memory at depth 12 (T 2048) and depth 20; 50 training steps through the
trainer, then a resume from step 25 that must reproduce them; FlexAttention against the dense SDPA mask on `SSSL`
(depth 8, T 2048) next to `L`.
Every figure is printed; a failing section prints its error and the check goes on; the exit status is 1 when
any section failed. Sections are skipped (and say so) once --budget seconds have passed.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

T0 = time.time()
FAILED: list[str] = []


def section(name: str, budget: float):
    "Decorator: run the section, print its time, record a failure instead of stopping."
    def wrap(fn):
        def run(*a, **kw):
            if time.time() - T0 > budget:
                print(f"\n== {name}: skipped (the {budget:.0f} s budget is spent)", flush=True); return None
            print(f"\n== {name}", flush=True); t = time.time()
            try:
                out = fn(*a, **kw)
                print(f"   ({time.time() - t:.1f} s)", flush=True); return out
            except Exception as e:
                FAILED.append(name)
                print(f"   FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
                traceback.print_exc(limit=3)
                if torch.cuda.is_available(): torch.cuda.empty_cache()
        return run
    return wrap


def sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize()


def peak_gb(dev) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")


def devices_and_versions(dev):
    import platform
    print(f"   python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, "
          f"cudnn {torch.backends.cudnn.version() if dev.type == 'cuda' else None}")
    try:
        import triton; print(f"   triton {triton.__version__}")
    except ImportError: print("   triton not installed")
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        print(f"   {p.name}: compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
              f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}, {torch.cuda.device_count()} device(s) visible")
    from vibenanochat.trainer import peak_flops
    print(f"   peak bf16 FLOP/s assumed for MFU: {peak_flops(dev):.3e}")


def references(dev, small: bool):
    import torch.nn.functional as F
    from vibenanochat.attention import attention_mask, window_attention
    from vibenanochat.model import softcap_cross_entropy
    torch.manual_seed(0)
    N, C, V = (512, 64, 1000) if small else (8192, 768, 50304)
    x = torch.randn(N, C, device=dev, requires_grad=True)
    w = (torch.randn(V + 48, C, device=dev) * 0.05).requires_grad_()
    tgt = torch.randint(0, V, (N,), device=dev); tgt[::9] = -1
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        ref = F.cross_entropy(15 * torch.tanh((x @ w.mT)[:, :V].float() / 15), tgt, ignore_index=-1)
        g_ref = torch.autograd.grad(ref, (x, w))
        for compiled in (False, True):
            got = softcap_cross_entropy(x, w, tgt, V, 15.0, compiled=compiled)
            g = torch.autograd.grad(got, (x, w))
            rel = [((a - b).norm() / b.norm()).item() for a, b in zip(g, g_ref)]
            print(f"   fused loss ({'compiled' if compiled else 'eager'}) vs plain, bf16: loss {got.item():.6f} vs {ref.item():.6f}, "
                  f"grad rel. err x {rel[0]:.2e}, W {rel[1]:.2e}")
            assert abs(got.item() - ref.item()) < 1e-2 and max(rel) < 2e-2
    B, H, Hkv, T, D = (2, 4, 2, 256, 32) if small else (4, 12, 6, 2048, 128)
    q = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=dev.type == "cuda")
    k, v = (torch.randn(B, Hkv, T, D, device=dev, dtype=torch.bfloat16, requires_grad=dev.type == "cuda") for _ in range(2))
    for window in (T // 4, T // 2):
        flex = torch.compile(window_attention, dynamic=False)(q, k, v, window)
        dense = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(T, T, 0, window, device=dev), enable_gqa=True)
        err = (flex.float() - dense.float()).abs().max().item()
        msg = f"   FlexAttention vs dense-mask SDPA, window {window}: max |Δ| out {err:.2e}"
        if q.requires_grad:
            gf, gd = torch.autograd.grad(flex.float().square().sum(), (q, k, v)), torch.autograd.grad(dense.float().square().sum(), (q, k, v))
            rel = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(gf, gd))
            msg += f", grads rel. err {rel:.2e}"; assert rel < 3e-2
        print(msg); assert err < 3e-2


def throughput(dev, depth: int, T: int, B: int, pattern: str = "L", steps: int = 10, flex: bool = True, label: str = ""):
    "bf16 + compile training steps of a fresh model: tokens/s, MFU, peak memory. Returns tok/s."
    import vibenanochat.attention as attention
    from vibenanochat.config import GPTConfig
    from vibenanochat.distmuon import make_optimizer
    from vibenanochat.model import GPT
    from vibenanochat.trainer import peak_flops
    torch._dynamo.reset()
    real_use_flex = attention.use_flex
    if not flex: attention.use_flex = lambda q: False       # the dense-mask SDPA path, for comparison
    try:
        if dev.type == "cuda": torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        cfg = GPTConfig.from_depth(depth, seq_len=T, vocab_size=50304 if dev.type == "cuda" else 512, window_pattern=pattern)
        model = GPT(cfg).to(dev)
        opt = make_optimizer(model, depth=depth, total_batch_size=B * T)
        fwd = torch.compile(model, dynamic=False)
        gen = torch.Generator(device=dev).manual_seed(1)
        x = torch.randint(0, cfg.vocab_size, (B, T + 1), device=dev, generator=gen)
        t = time.time()
        for _ in range(3):                                   # warm-up: compilation
            with torch.autocast(dev.type, dtype=torch.bfloat16): loss = fwd(x[:, :-1], x[:, 1:])
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        sync(dev); warm = time.time() - t
        t = time.time()
        for _ in range(steps):
            with torch.autocast(dev.type, dtype=torch.bfloat16): loss = fwd(x[:, :-1], x[:, 1:])
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        sync(dev); dt = (time.time() - t) / steps
        tok_s = B * T / dt
        mfu = 100 * model.estimate_flops() * tok_s / peak_flops(dev)
        print(f"   {label or f'd{depth}'} {pattern:<5} T {T} B {B}: {tok_s:>10,.0f} tok/s  {dt * 1e3:7.1f} ms/step  MFU {mfu:5.1f}%  "
              f"peak mem {peak_gb(dev):6.2f} GiB  warm-up {warm:5.1f} s  loss {loss.item():.3f}", flush=True)
        return tok_s
    finally:
        attention.use_flex = real_use_flex


def depth_runs(dev, small: bool):
    for depth, B in ([(2, 2)] if small else [(12, 32), (20, 16)]):
        T = 128 if small else 2048
        try: throughput(dev, depth, T, B)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache(); print(f"   d{depth} B {B}: out of memory, retrying with B {B // 2}")
            throughput(dev, depth, T, B // 2)


def windows(dev, small: bool):
    depth, T, B = (2, 128, 2) if small else (8, 2048, 16)     # depth 8: three compilations must fit the budget
    base = throughput(dev, depth, T, B, "L", label="L            ")
    flex = throughput(dev, depth, T, B, "SSSL", flex=True, label="SSSL flex    ")
    sdpa = throughput(dev, depth, T, B, "SSSL", flex=False, label="SSSL dense   ")
    print(f"   SSSL with FlexAttention: {flex / base:.2f}x the tokens/s of L, {flex / sdpa:.2f}x the dense-mask SDPA")


def train_and_resume(dev, small: bool):
    "50 steps through the trainer (bf16, compile), then a resume from step 25 that must reproduce steps 26..50."
    import vibenanochat.data as data
    import vibenanochat.tokenizer as tok
    import vibenanochat.trainer as trainer
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        repo = Path(__file__).resolve().parents[1]
        corpus = root / "corpus.txt"                          # this repository's own text: always here, no download
        corpus.write_text("\n\n".join(p.read_text(errors="ignore") for p in sorted((repo / "vibenanochat").glob("*.py"))) * 4)
        enc = tok.train_tokenizer(data.read_local(corpus), 1024)
        data.prepare(str(corpus), root / "data", tokenizer=enc, progress=False)
        T, B = (64, 4) if small else (512, 16)
        args = dict(depth=4, seq_len=T, device_batch_size=B, total_batch_size=B * T, num_iterations=50, save_every=25,
                    eval_every=-1, eval_tokens=B * T, log_every=5, dtype="bf16", compile="on", device=dev.type,
                    data_dir=str(root / "data"), log_dir=str(root / "logs"), window_pattern="SSSL")
        t = time.time()
        # deterministic kernels: a compiled embedding backward otherwise adds its rows in whatever order the threads
        # run, so two identical runs differ in the last bits and 25 steps amplify that (measured on a CPU: 1e-2)
        det = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            trainer.train(trainer.TrainConfig(**args, run_name="a"))
            print(f"   50 steps in {time.time() - t:.1f} s (with compilation)")
            shutil.copytree(root / "logs" / "a", root / "logs" / "b")
            shutil.rmtree(root / "logs" / "b" / "checkpoints" / "step_000050")
            trainer.train(trainer.TrainConfig(**args, run_name="b", resume=True))
        finally:
            torch.use_deterministic_algorithms(det)
        la, lb = (trainer.read_metrics(root / "logs" / r / "metrics.jsonl") for r in ("a", "b"))
        la, lb = ([m["loss"] for m in l if "loss" in m and "event" not in m] for l in (la, lb))
        diff = max(abs(x - y) for x, y in zip(la[25:], lb[25:]))
        print(f"   losses: step 1 {la[0]:.4f}, step 25 {la[24]:.4f}, step 50 {la[49]:.4f}; resumed step 50 {lb[49]:.4f}; "
              f"max |Δ| over steps 26..50: {diff:.2e}{' (bitwise equal)' if diff == 0 else ''}")
        # bit for bit on a CPU (checked); on a GPU some kernels have no deterministic variant, so a small tolerance
        assert len(la) == len(lb) == 50 and la[49] < la[0] and (diff == 0 if dev.type == "cpu" else diff < 1e-2), (la, lb)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="run every section at toy sizes on the CPU")
    p.add_argument("--budget", type=float, default=360, help="seconds after which remaining sections are skipped")
    a = p.parse_args()
    if not torch.cuda.is_available() and not a.cpu_smoke:
        print(f"gpu_check: no CUDA device on this machine (torch {torch.__version__}): nothing to check"); return 0
    dev = torch.device("cuda" if not a.cpu_smoke else "cpu")
    small = a.cpu_smoke
    torch.backends.cuda.matmul.allow_tf32 = True
    section("device and versions", a.budget)(devices_and_versions)(dev)
    section("fused loss and FlexAttention against their references", a.budget)(references)(dev, small)
    section("bf16 + compile throughput at depth 12 and 20", a.budget)(depth_runs)(dev, small)
    section("50 training steps, then resume from step 25", a.budget)(train_and_resume)(dev, small)
    section("FlexAttention vs dense SDPA on SSSL", a.budget)(windows)(dev, small)
    print(f"\ngpu_check: {time.time() - T0:.0f} s, {'all sections passed' if not FAILED else 'FAILED: ' + ', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
