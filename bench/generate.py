"""Sampling speed with and without the KV cache, for 256 and 1024 new tokens, on the current device.

    python bench/generate.py                      # depth 12 on a GPU, depth 4 on a CPU
    python bench/generate.py --depth 2 --batch 8 --lengths 256,1024 --device cpu --threads 1

"with cache" is `vibenanochat.generate` (prefill, then one token per step); "no cache" is the model chapter's
naive `GPT.generate`, which runs the whole sequence again for every token. Both sample with temperature 1 and
top-k 50 from a randomly initialised GPT (speed does not depend on the weights) with the GPT-2 vocabulary.
Tokens per second count new tokens only, summed over the rows of a batch.
"""
import argparse
import time

import torch

import vibenanochat.generate as G
import vibenanochat.plumbing as plumbing
from vibenanochat.config import GPTConfig
from vibenanochat.model import GPT


def timed(fn, device: str) -> float:
    "Seconds `fn()` takes, with the device's queue drained before and after."
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync(); t = time.perf_counter(); fn(); sync()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=plumbing.default_device())
    ap.add_argument("--depth", type=int, default=None, help="model depth (default: 12 on cuda, else 4)")
    ap.add_argument("--seq_len", type=int, default=1024, help="training context; the RoPE table holds 10x this")
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--lengths", default="256,1024", help="comma-separated numbers of new tokens")
    ap.add_argument("--batch", type=int, default=1, help="also time the cache with this many rows (the naive loop is batch 1)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--skip_naive", action="store_true", help="time only the cached sampler")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    device, depth = args.device, args.depth or (12 if args.device.startswith("cuda") else 4)
    lengths = [int(x) for x in args.lengths.split(",")]
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(depth, seq_len=args.seq_len)).to(device=device, dtype=getattr(torch, args.dtype)).eval()
    prompt = torch.randint(0, model.config.vocab_size, (args.prompt_len,)).tolist()
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"{device} ({torch.get_num_threads()} threads)"
    print(f"device {name}, depth {depth} ({n_params / 1e6:.1f}M parameters), {args.dtype}, prompt {args.prompt_len} tokens, "
          f"torch {torch.__version__}")

    cached = lambda n, b: G.generate_tokens(model, prompt, n, temperature=1.0, top_k=50, num_samples=b)
    naive = lambda n: list(model.generate(prompt, n, temperature=1.0, top_k=50))
    cached(8, args.batch); naive(8)                                    # warm-up: allocator, kernels, caches
    rows = [("with cache, batch 1", lambda n: n / timed(lambda: cached(n, 1), device))]
    if args.batch > 1:
        rows.append((f"with cache, batch {args.batch}", lambda n: n * args.batch / timed(lambda: cached(n, args.batch), device)))
    if not args.skip_naive:
        rows.append(("no cache, batch 1", lambda n: n / timed(lambda: naive(n), device)))
    results = {label: [f(n) for n in lengths] for label, f in rows}
    print(f"{'new tokens/s':<24}" + "".join(f"{n:>12}" for n in lengths))
    for label, vals in results.items():
        print(f"{label:<24}" + "".join(f"{v:>12.1f}" for v in vals))
    if "no cache, batch 1" in results:
        speedup = [c / n for c, n in zip(results["with cache, batch 1"], results["no cache, batch 1"])]
        print(f"{'cache speed-up':<24}" + "".join(f"{s:>11.1f}x" for s in speedup))


if __name__ == "__main__":
    main()
