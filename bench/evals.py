"""CORE evaluation speed: examples/s of an (untrained) depth-4 GPT for each task type, on the CPU by default.

    python bench/evals.py                            # depth 4, 16 examples per task, CPU
    python bench/evals.py --examples 64 --device cuda --seq-len 2048

Scores the first examples (after the usual Random(1337) shuffle) of a 0-shot and a 10-shot task of
each type through `evaluate_task`, the code path training and the CLI use. The cost is the model's
forward over every prompt (all choices, with their few-shot context), so tokens/s is printed too.
The bundle is --bundle (a folder, or `eval_bundle_mini` for the committed 100-row subsample), else the
full bundle found by the asset resolver (`$VNC_DATA_DIR`, data/, the cache, else downloaded).
"""
import argparse
import time

import torch

import vibenanochat.assets as assets
import vibenanochat.evals as evals
import vibenanochat.tokenizer as tokenizer
from vibenanochat.config import GPTConfig
from vibenanochat.model import GPT

TASKS = ["copa", "hellaswag", "winograd", "winogrande", "lambada_openai", "bigbench_qa_wikidata"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024, help="the model's context; longer prompts are cropped on the left")
    ap.add_argument("--examples", type=int, default=16, help="examples per task")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    ap.add_argument("--bundle", default=None, help="eval bundle folder, or eval_bundle_mini (default: the full bundle)")
    ap.add_argument("--tokenizer", default=None, help="default: GPT-2's files from the asset resolver")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    bundle = evals.find_bundle(a.bundle)
    enc = tokenizer.get_tokenizer(a.tokenizer or assets.asset("tokenizers/gpt2"))
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(a.depth, vocab_size=enc.n_vocab, seq_len=a.seq_len)).to(device).eval()
    specs = {s.label: s for s in evals.read_suite(bundle)[0]}
    print(f"depth {a.depth}, context {a.seq_len}, {a.examples} examples/task, batch_tokens {a.batch_tokens}, "
          f"device {device}, {torch.get_num_threads()} CPU threads")
    print(f"{'task':22} {'type':17} {'shots':>5} {'tokens':>8} {'seconds':>8} {'examples/s':>10} {'tokens/s':>9}")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for label in a.tasks.split(","):
        spec = specs[label]
        data = evals.task_data(bundle, spec, a.examples)
        tokens = sum(len(s) for i in range(len(data)) for s in evals.prepare_example(data, i, spec, enc, a.seq_len)[0])
        with ctx: evals.evaluate_task(model, enc, data[:2], spec, device, a.batch_tokens)   # warm-up
        if device.type == "cuda": torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ctx: evals.evaluate_task(model, enc, data, spec, device, a.batch_tokens)
        if device.type == "cuda": torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"{label:22} {spec.task_type:17} {spec.num_fewshot:5d} {tokens:8d} {dt:8.2f} {len(data) / dt:10.2f} {tokens / dt:9.0f}")


if __name__ == "__main__":
    main()
