"""Generation outside its chapter: the KV-cache decoder against naive recomputation, sampling rules and seeds,
stop tokens, checkpoint loading, the widget without a browser (click, Stop), the CLI, and the one-line refusals of
damaged checkpoints and tokenizers (generate and evals CLIs); too-long requests are fitted with a warning."""
import html
import json
import subprocess
import sys
import time

import pytest
import torch

import vibenanochat.checkpoint as checkpoint
import vibenanochat.evals as evals
import vibenanochat.generate as G
from conftest import REPO, need_asset, small_bpe, tiny_checkpoint, tiny_gpt
from vibenanochat.config import GPTConfig
from vibenanochat.model import GPT
from vibenanochat.tokenizer import bos_id, save_tokenizer

load = checkpoint.load_model_and_tokenizer       # what generation, evaluation and the widget load with


@pytest.fixture(scope="module")
def enc():
    return small_bpe(320)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, enc):
    "A run folder with two checkpoints (the latest is step 20) and the tokenizer beside the weights."
    run = tmp_path_factory.mktemp("logs") / "demo"
    for step, seed in [(10, 1), (20, 2)]:
        tiny_checkpoint(checkpoint.step_dir(run, step), enc, step=step, seed=seed, depth=2, seq_len=64)
    return run


CONFIGS = [dict(), dict(n_kv_head=1), dict(window_pattern="SL", short_window=5),
           dict(depth=4, n_kv_head=2, window_pattern="SSSL", short_window=3),
           dict(depth=3, n_kv_head=1, window_pattern="SSL", short_window=4, value_embeds=True, layer_scalars=True)]


@pytest.mark.parametrize("kw", CONFIGS, ids=["plain", "gqa", "window", "d4-gqa-sssl", "everything"])
def test_kv_cache_greedy_equals_naive(kw):
    m = tiny_gpt(seed=3, **dict(kw))
    prompt, n = [1, 2, 3, 50, 7, 9], 50                           # 56 positions: far past seq_len 16, windows truncate
    naive = list(m.generate(prompt, n, temperature=0.0))
    steps = list(G.stream(m, prompt, n, temperature=0.0, num_samples=2))
    assert [s.tokens for s in steps] == [[t, t] for t in naive]
    with torch.no_grad():
        full = m(torch.tensor([prompt + naive]))[0, len(prompt) - 1:-1]
    assert (torch.stack([s.logits[1] for s in steps]) - full).abs().max() < 1e-4


def test_sampling_stays_in_top_k_and_nucleus():
    m = tiny_gpt(seed=4, vocab_size=200)
    for seed in range(10):
        for s in G.stream(m, [5, 6], 15, temperature=3.0, top_k=3, seed=seed, num_samples=3):
            top = s.logits.topk(3, dim=-1).indices
            assert all(t in top[r].tolist() for r, t in enumerate(s.tokens))
        for s in G.stream(m, [5, 6], 15, temperature=1.0, top_p=0.3, seed=seed, num_samples=3):
            probs = s.logits.softmax(-1)
            for r, t in enumerate(s.tokens):                    # tokens strictly more likely than t hold < p of the mass
                assert probs[r][probs[r] > probs[r, t]].sum() < 0.3
    assert G.generate_tokens(m, [5, 6], 20, top_k=1, temperature=1.0) == G.generate_tokens(m, [5, 6], 20, temperature=0.0)


def test_same_seed_same_text(enc):
    m = tiny_gpt(seed=5, vocab_size=enc.n_vocab, seq_len=64)
    kw = dict(max_new_tokens=40, temperature=1.0, top_k=50, stop_tokens=[])
    a = G.generate(m, enc, "The list", seed=7, num_samples=3, **kw)
    assert a == G.generate(m, enc, "The list", seed=7, num_samples=3, **kw)
    assert a != G.generate(m, enc, "The list", seed=8, num_samples=3, **kw)
    assert len(set(a)) > 1                                           # rows draw different numbers
    one = G.generate_tokens(m, G.encode_prompt(enc, "The list"), 40, temperature=1.0, top_k=50, seed=7)[0]
    assert one == list(m.generate(G.encode_prompt(enc, "The list"), 40, temperature=1.0, top_k=50, seed=7))


def test_stops_at_bos_by_default(enc):
    "A model that always predicts BOS: every row of `generate` ends at once, unless told not to stop."
    m = GPT(GPTConfig.from_depth(2, vocab_size=enc.n_vocab, seq_len=32)).eval()
    with torch.no_grad():
        m.wte.weight.fill_(1.0)                 # every input looks alike; the blocks start as the identity
        m.lm_head.weight.zero_(); m.lm_head.weight[bos_id(enc)] = 1.0
    assert G.generate(m, enc, "hello", 10, num_samples=2) == ["", ""]
    assert G.generate(m, enc, "hello", 3, stop_tokens=[], temperature=0.0) == ["<|endoftext|>" * 3]


def test_rows_stop_independently():
    m = tiny_gpt(seed=6, vocab_size=60)
    free = G.generate_tokens(m, [1, 2], 40, temperature=1.0, seed=11, num_samples=5)
    stop = free[2][5]
    cut = G.generate_tokens(m, [1, 2], 40, temperature=1.0, seed=11, num_samples=5, stop_tokens=[stop])
    assert cut == [f[:f.index(stop)] if stop in f else f for f in free]
    assert any(len(c) < 40 for c in cut) and cut[2] == free[2][:free[2].index(stop)]


def test_errors_name_the_problem(tmp_path):
    m = tiny_gpt(seed=0, seq_len=8)                                   # RoPE table: 80 positions
    with pytest.raises(ValueError, match="exceed the model's RoPE table"):
        list(G.stream(m, [1] * 10, 100))
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoint.find_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.find_checkpoint(tmp_path / "missing")


def test_load_checkpoint_picks_latest_step_and_its_tokenizer(run_dir, enc):
    model, enc2, meta = load(run_dir)
    assert meta["step"] == 20 and checkpoint.find_checkpoint(run_dir / "checkpoints") == run_dir / "checkpoints" / "step_000020"
    assert enc2.encode_ordinary("sorted(iterable)") == enc.encode_ordinary("sorted(iterable)")
    assert torch.equal(model.lm_head.weight, tiny_gpt(seed=2, vocab_size=enc.n_vocab, seq_len=64).lm_head.weight)
    _, _, meta10 = load(run_dir / "checkpoints" / "step_000010" / "model.pt")
    assert meta10["step"] == 10


def test_load_checkpoint_gpt2_spec(tmp_path):
    need_asset("tokenizers/gpt2")                       # meta says "gpt2": loaded from this asset
    checkpoint.save_model(tiny_gpt(seed=0, vocab_size=50257, depth=1), tmp_path / "a", dict(tokenizer="gpt2"))
    _, enc, _ = load(tmp_path / "a")
    assert enc.n_vocab == 50257
    checkpoint.save_model(tiny_gpt(seed=0, vocab_size=300, depth=1), tmp_path / "b", dict(tokenizer="gpt2"))
    with pytest.raises(ValueError, match="50257 tokens but the model"):
        load(tmp_path / "b")


def test_evals_and_generate_load_the_same_model_and_tokenizer(tmp_path, enc):
    "One loader: the evaluator's and the generation widget's see the same weights and tokenizer, wherever the tokenizer lives."
    run = tmp_path / "run"
    tiny_checkpoint(checkpoint.step_dir(run, 3), enc, step=3, seed=4, meta_tokenizer="gpt2", tokenizer_json=False)
    tiny_checkpoint(checkpoint.step_dir(run, 5), enc, step=5, seed=5, meta_tokenizer="gpt2", tokenizer_json=False)
    save_tokenizer(enc, run / "tokenizer.json")          # beside the run, not the weights; meta names gpt2 (50257 tokens)
    for path in (run, checkpoint.step_dir(run, 5), checkpoint.step_dir(run, 5) / "model.pt"):
        m_eval, enc_eval, meta, folder = evals._load_checkpoint(path, torch.device("cpu"))
        w = G.GenerationWidget.from_checkpoint(path, device="cpu")
        assert folder == checkpoint.step_dir(run, 5) and meta["step"] == 5
        a, b = m_eval.state_dict(), w.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(a["lm_head.weight"], tiny_gpt(enc.n_vocab, seed=5, depth=1, seq_len=64).lm_head.weight)
        assert enc_eval.n_vocab == w.enc.n_vocab == enc.n_vocab == 320
        text = "sorted(iterable, /, *, key=None)"
        assert enc_eval.encode_ordinary(text) == w.enc.encode_ordinary(text) == enc.encode_ordinary(text)


def widget(run_dir, **kw):
    model, enc, _ = load(run_dir)
    return G.GenerationWidget(model, enc, **kw), model, enc


def test_widget_click_produces_the_generated_text(run_dir):
    w, model, enc = widget(run_dir, prompt="Return a list", max_tokens=30, temperature=0.9, top_k=40, seed=3)
    w.generate_button.click()
    assert w.wait(60) and w.stopped_by in ("length", "end of text"), w.status.value
    expected = G.generate(model, enc, "Return a list", 30, 0.9, 40, None, 3)[0]
    assert w.completion == expected and w.n_generated >= 1
    assert f'<span class="vnc-completion">{html.escape(expected)}</span>' in w.output.value
    assert w.chart.value.count("<tr>") == 10 and "tokens" in w.status.value
    assert not w.generate_button.disabled and w.stop_button.disabled


def test_widget_stop_halts_generation(run_dir):
    w, _, _ = widget(run_dir, prompt="x", stop_tokens=[])
    w.max_tokens.value = w.max_tokens.max                           # 576 tokens: far more than we let it write
    w.generate_button.click()
    assert w.generate_button.disabled and not w.stop_button.disabled
    t0 = time.time()
    while w.n_generated < 3 and time.time() - t0 < 30: time.sleep(0.001)
    w.stop_button.click()
    assert w.wait(30) and w.stopped_by == "stop", w.status.value
    n, text = w.n_generated, w.output.value
    assert 3 <= n < w.max_tokens.value
    time.sleep(0.2)
    assert (w.n_generated, w.output.value) == (n, text)              # nothing more arrives after Stop
    w.max_tokens.value = 40
    w.generate_button.click()                                        # and it can run again, to the end
    assert w.wait(120) and w.stopped_by == "length" and w.n_generated == 40


def run_cli(*args, stdin=None, module=True):
    cmd = [sys.executable, "-m", "vibenanochat.generate"] if module else [sys.executable, str(REPO / "vibenanochat" / "generate.py")]
    return subprocess.run(cmd + [str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=120)


def test_cli_prompt_streams_the_same_text(run_dir):
    r = run_cli("--checkpoint", run_dir, "--prompt", "The capital of France is", "--temperature", 0.8, "--top_k", 50,
                "--max_length", 25, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    model, enc, _ = load(run_dir)
    assert r.stdout == "The capital of France is" + G.generate(model, enc, "The capital of France is", 25, 0.8, 50)[0] + "\n"
    assert "step 20" in r.stderr
    r2 = run_cli("--checkpoint", run_dir / "checkpoints" / "step_000010", "--prompt", "a", "--num-samples", 3,
                 "--top-p", 0.9, "--seed", 5, "--max-length", 10, module=False)       # the path form, dashed flags
    assert r2.returncode == 0 and r2.stdout.count("--- sample") == 3, r2.stderr


def test_cli_interactive_loop_and_errors(run_dir):
    r = run_cli("--checkpoint", run_dir, "--temperature", 0, "--max_length", 8, stdin="hello\n\nworld\n/quit\nnever\n")
    assert r.returncode == 0, r.stderr
    model, enc, _ = load(run_dir)
    for p in ("hello", "world"):
        assert p + G.generate(model, enc, p, 8, temperature=0.0)[0] + "\n" in r.stdout
    assert "never" not in r.stdout and r.stdout.count("prompt> ") == 4
    bad = run_cli("--checkpoint", run_dir / "nope", "--prompt", "x")
    assert bad.returncode != 0 and "does not exist" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    for flag in ("--top_p", "--top-p"):
        bad = run_cli("--checkpoint", run_dir, "--prompt", "x", flag, 0)
        assert bad.returncode == 1 and "--top_p must be in (0, 1]" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = run_cli("--prompt", "x")
    assert bad.returncode == 1 and "--checkpoint is required" in bad.stderr


# ---- requests that do not fit the model: cropped and capped with a warning, never an error

def test_long_prompt_and_absurd_length_are_fitted_with_warnings(enc):
    m = tiny_gpt(seed=8, vocab_size=enc.n_vocab, seq_len=8)             # T = 8, RoPE table L = 80 positions
    L, T = m.cos.size(0), m.config.seq_len
    text = "sorted(iterable, /, *, key=None, reverse=False) " * 40
    tokens = G.encode_prompt(enc, text)
    assert len(tokens) > L
    with pytest.warns(UserWarning) as caught:
        out = G.generate(m, enc, text, 100_000, temperature=0.0, stop_tokens=[])
    notes = [str(w.message) for w in caught]
    assert len(notes) == 2 and "generating 73" in notes[0] and "keeping its last 8" in notes[1]
    # the naive reference: the last T prompt tokens, then L + 1 - T new ones, so the cache holds exactly L positions
    n = L + 1 - T
    assert out == [enc.decode(G.generate_tokens(m, tokens[-T:], n, temperature=0.0)[0])]
    with pytest.warns(UserWarning, match="keeping its last 61"):         # 20 new tokens leave 61 positions for the prompt
        assert G.generate(m, enc, text, 20, temperature=0.0, stop_tokens=[]) == \
            [enc.decode(G.generate_tokens(m, tokens[-61:], 20, temperature=0.0)[0])]
    short = G.encode_prompt(enc, "sorted(")
    with pytest.warns(UserWarning, match=f"generating {L + 1 - len(short)}"):
        G.generate(m, enc, "sorted(", 10**6, temperature=0.0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                  # a request that fits: no warning, same text
        assert G.generate(m, enc, "sorted(", 30, temperature=0.0, stop_tokens=[]) == \
            [enc.decode(G.generate_tokens(m, short, 30, temperature=0.0)[0])]


def test_cli_fits_a_long_prompt_and_max_length_in_one_warning_line_each(run_dir):
    model, enc, _ = load(run_dir)                                       # seq_len 64: 640 positions
    prompt = "Return a new list containing all items from the iterable in ascending order. " * 30
    assert len(G.encode_prompt(enc, prompt)) > 640
    r = run_cli("--checkpoint", run_dir, "--prompt", prompt, "--max_length", 100000, "--temperature", 0, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    warned = [l for l in r.stderr.splitlines() if l.startswith("warning:")]
    assert len(warned) == 2 and "generating 577" in warned[0] and "keeping its last 64" in warned[1], r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 3       # + the "loaded ..." line
    with pytest.warns(UserWarning):
        expected = G.generate(model, enc, prompt, 100000, temperature=0.0)[0]
    assert r.stdout == prompt + expected + "\n"


# ---- damaged checkpoints and tokenizers: one line on stderr, exit code 1, nothing written, from both CLIs

def _truncate_model(ckpt):
    p = ckpt / "model.pt"; p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

def _meta_config(**change):
    def edit(ckpt):
        meta = json.loads((ckpt / "meta.json").read_text()); meta["config"].update(change)
        (ckpt / "meta.json").write_text(json.dumps(meta))
    return edit

def _tokenizer_json(drop=None, **change):
    def edit(ckpt):
        obj = json.loads((ckpt / "tokenizer.json").read_text()); obj.update(change)
        if drop: del obj[drop]
        (ckpt / "tokenizer.json").write_text(json.dumps(obj))
    return edit

DAMAGE = {
    "truncated-model": (_truncate_model, "model.pt"),
    "unknown-config-key": (_meta_config(n_experts=8), "n_experts"),
    # 2**38-wide embeddings: ~10^14 parameters, far beyond any machine; must be refused before anything is allocated
    "absurd-size": (_meta_config(n_layer=1, n_head=1, n_kv_head=1, n_embd=2**38), None),
    "tokenizer-missing-key": (_tokenizer_json(drop="ranks"), "tokenizer.json"),
    "tokenizer-bad-pattern": (_tokenizer_json(pat_str="(?P<unclosed"), "tokenizer.json"),
}

def snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("cli", ["generate", "evals"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_cli_refuses_a_damaged_checkpoint_in_one_line(tmp_path, enc, cli, damage):
    edit, named = DAMAGE[damage]
    ckpt = tiny_checkpoint(checkpoint.step_dir(tmp_path / "run", 5), enc, step=5)
    edit(ckpt)
    before = snapshot(tmp_path)
    if cli == "generate":
        r = run_cli("--checkpoint", tmp_path / "run", "--prompt", "sorted(", "--device", "cpu")
    else:
        r = subprocess.run([sys.executable, "-m", "vibenanochat.evals", "--checkpoint", str(tmp_path / "run"),
                            "--bundle", "eval_bundle_mini", "--max-per-task", "2", "--tasks", "copa", "--device", "cpu"],
                           capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    if named: assert named in lines[0], lines[0]
    assert r.stdout == "" and snapshot(tmp_path) == before              # nothing printed, nothing written
