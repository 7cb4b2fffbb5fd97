"""One training step of a GPT at the CPU benchmark shape: tokens/s, the forward / backward / optimizer split, peak RSS.

    python bench/step.py                                   # depth 4, T 256, B 8, V 50,304, 2 threads: fp32 eager, bf16+compile
    python bench/step.py --modes fp32 --pattern SSSL       # sliding windows against the default L
    python bench/step.py --baseline ../other-checkout      # the same measurement of another source tree, back to back

Each (source tree, mode) runs in a fresh process (so peak RSS is its own) on the same random batches, with the
model built as a benchmark harness builds it: `GPT(GPTConfig.from_depth(depth, seq_len=T, vocab_size=V))` and
`make_optimizer(model, depth=depth, total_batch_size=B*T)` with their defaults, except that Newton–Schulz runs in the
mode's precision as in the trainer. `fp32` is eager fp32 (the CPU default); `bf16c` is bf16 autocast with the model
compiled (`torch.compile(model, dynamic=False)`), the training defaults on a GPU.
Times are medians over --steps steps after --warmup steps (compilation happens in the warm-up). `cpu s` is the process's
CPU time per step (all its threads): on a shared machine it moves much less than wall time when others take the cores.
"""
import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path


def measure(a) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    from vibenanochat.config import GPTConfig
    from vibenanochat.distmuon import make_optimizer
    from vibenanochat.model import GPT
    torch.manual_seed(0)
    cfg = GPTConfig.from_depth(a.depth, seq_len=a.seq_len, vocab_size=a.vocab, window_pattern=a.pattern)
    model = GPT(cfg)
    compiled = a.mode == "bf16c"
    kw = {}
    if "ns_dtype" in inspect.signature(make_optimizer).parameters:      # (a --baseline tree may predate it)
        kw["ns_dtype"] = torch.bfloat16 if compiled else torch.float32  # the run's precision, as the trainer passes it
    opt = make_optimizer(model, depth=a.depth, total_batch_size=a.batch * a.seq_len, **kw)
    fwd = torch.compile(model, dynamic=False) if compiled else model
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if compiled else nullcontext
    gen = torch.Generator().manual_seed(1)
    parts, cpu = {"forward": [], "backward": [], "optimizer": []}, []
    for i in range(a.warmup + a.steps):
        x = torch.randint(0, a.vocab, (a.batch, a.seq_len + 1), generator=gen)
        c0, t0 = time.process_time(), time.perf_counter()
        with ctx(): loss = fwd(x[:, :-1], x[:, 1:])
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step(); opt.zero_grad(set_to_none=True)
        t3, c3 = time.perf_counter(), time.process_time()
        if i >= a.warmup:
            cpu.append(c3 - c0)
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)): parts[k].append(v)
    med = {k: statistics.median(v) for k, v in parts.items()}
    step = sum(med.values())
    return dict(mode=a.mode, pattern=a.pattern, loss=loss.item(), tok_s=a.batch * a.seq_len / step, step_s=step, cpu_s=statistics.median(cpu),
                **{f"{k}_s": v for k, v in med.items()}, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq-len", "--seq_len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pattern", default="L", help="window pattern, e.g. L or SSSL")
    p.add_argument("--modes", default="fp32,bf16c", help="comma-separated: fp32 (eager) and/or bf16c (bf16 + compile)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--baseline", default="", help="another source tree (a checkout of this repository) to measure first")
    p.add_argument("--mode", help=argparse.SUPPRESS)          # internal: measure one mode in this process
    a = p.parse_args()
    if a.mode:
        print(json.dumps(measure(a))); return
    here = Path(__file__).resolve().parents[1]
    trees = ([("baseline", Path(a.baseline).resolve())] if a.baseline else []) + [("this tree", here)]
    base, argv = [], iter(sys.argv[1:])                     # the flags again, less --baseline and its value
    for x in argv:
        if x == "--baseline": next(argv, None)
        elif not x.startswith("--baseline="): base.append(x)
    print(f"depth {a.depth}, T {a.seq_len}, B {a.batch}, V {a.vocab}, pattern {a.pattern}, {a.threads} threads, "
          f"torch in {sys.executable}; median of {a.steps} steps after {a.warmup} warm-up")
    print(f"{'source':<10} {'mode':<6} {'tok/s':>7} {'step s':>7} {'fwd s':>6} {'bwd s':>6} {'opt s':>6} {'cpu s':>6} {'peak RSS MB':>11} {'loss':>7}")
    for mode in a.modes.split(","):
        for name, tree in trees:
            env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(a.threads))
            r = subprocess.run([sys.executable, str(here / "bench" / "step.py"), *base, "--mode", mode],
                               capture_output=True, text=True, env=env, cwd=tree)
            if r.returncode != 0:
                print(f"{name:<10} {mode:<6} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"); continue
            m = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{name:<10} {mode:<6} {m['tok_s']:>7.0f} {m['step_s']:>7.3f} {m['forward_s']:>6.3f} {m['backward_s']:>6.3f} "
                  f"{m['optimizer_s']:>6.3f} {m['cpu_s']:>6.3f} {m['peak_rss_mb']:>11.0f} {m['loss']:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
