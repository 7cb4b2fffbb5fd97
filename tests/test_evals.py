"""Evaluation outside its chapter, on the committed mini CORE bundle (real tasks, real few-shot prompts) and, when
it can be had, the full one: prompt rendering, an oracle model, the reference CORE arithmetic, 2 ranks = 1 rank
under torchrun, bad input, bundle and gauntlet-file downloads, the CLI on a saved checkpoint, and CORE scored
inside a real training run."""
import csv
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from _local_server import Server, sandbox
from conftest import REPO, need_asset, tiny_checkpoint, torchrun

from vibenanochat import assets, evals
from vibenanochat.config import GPTConfig
from vibenanochat.model import GPT
from vibenanochat.tokenizer import bos_id, token_bytes


@pytest.fixture(scope="module")
def bundle():
    "The mini CORE bundle committed in data/: every task, 100 rows each."
    return evals.find_bundle(evals.MINI_BUNDLE_ASSET).resolve()


@pytest.fixture(scope="module")
def full_bundle():
    "The full CORE bundle: on the data search path, in the cache, or downloaded (skips offline, naming it)."
    return need_asset(evals.BUNDLE_ASSET)


def write_bundle(root: Path, tasks: dict, yaml_extra: str = "") -> Path:
    "A bundle in nanochat's layout: tasks = {label: (type, shots, delimiter, baseline, records or None)}."
    (root / "eval_data" / "t").mkdir(parents=True, exist_ok=True)
    lines, meta = ["icl_tasks:"], ["Eval Task,Task Category,Random baseline"]
    for label, (ttype, shots, delim, baseline, records) in tasks.items():
        lines += ["-", f"  label: {label}", f"  dataset_uri: t/{label}.jsonl", f"  num_fewshot: [{shots}]",
                  f"  icl_task_type: {ttype}", f"  continuation_delimiter: {json.dumps(delim)}"]
        meta.append(f"{label},toy,{baseline}")
        if records is not None:
            (root / "eval_data" / "t" / f"{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "core.yaml").write_text("\n".join(lines) + "\n" + yaml_extra)
    (root / "eval_meta_data.csv").write_text("\n".join(meta) + "\n")
    return root


# ------------------------------------------------------------------ rendering

def test_render_multiple_choice_with_fewshot():
    shots = [{"query": "Q: 1+1?", "choices": ["2", "3"], "gold": 0}, {"query": "Q: 2+1?", "choices": ["4", "3"], "gold": 1}]
    item = {"query": "Q: 2+2?", "choices": ["4", "5", "22"], "gold": 0}
    assert evals.render_mc(item, "\nAnswer: ", shots) == [
        "Q: 1+1?\nAnswer: 2\n\nQ: 2+1?\nAnswer: 3\n\nQ: 2+2?\nAnswer: 4",
        "Q: 1+1?\nAnswer: 2\n\nQ: 2+1?\nAnswer: 3\n\nQ: 2+2?\nAnswer: 5",
        "Q: 1+1?\nAnswer: 2\n\nQ: 2+1?\nAnswer: 3\n\nQ: 2+2?\nAnswer: 22"]
    assert evals.render_mc(item, " ") == ["Q: 2+2? 4", "Q: 2+2? 5", "Q: 2+2? 22"]


def test_render_schema_with_fewshot():
    shot = {"context_options": ["Anna thanked Bea because Anna", "Anna thanked Bea because Bea"], "continuation": "had helped her.", "gold": 1}
    item = {"context_options": ["The cup fell off the table because the cup", "The cup fell off the table because the table"],
            "continuation": "was tilted.", "gold": 1}
    assert evals.render_schema(item, " ", [shot]) == [
        "Anna thanked Bea because Bea had helped her.\n\nThe cup fell off the table because the cup was tilted.",
        "Anna thanked Bea because Bea had helped her.\n\nThe cup fell off the table because the table was tilted."]


def test_render_language_modeling_trims_and_strips():
    shots = [{"context": " Capital of Peru? ", "continuation": "Lima"}, {"context": "Capital of Chad?\n", "continuation": "N'Djamena"}]
    item = {"context": "\tCapital of Laos?  ", "continuation": "Vientiane"}
    without, full = evals.render_lm(item, "\nAnswer: ", shots)
    assert without == "Capital of Peru?\nAnswer: Lima\n\nCapital of Chad?\nAnswer: N'Djamena\n\nCapital of Laos?\nAnswer:"
    assert full == "Capital of Peru?\nAnswer: Lima\n\nCapital of Chad?\nAnswer: N'Djamena\n\nCapital of Laos?\nAnswer: Vientiane"


def test_fewshot_examples_use_the_published_seed(gpt2):
    data = [{"context": f"Fact {i}:", "continuation": f"v{i}"} for i in range(5)]
    # random.Random(1234 + 2).sample([0, 1, 3, 4], 2) == [4, 3]: the draw nanochat makes for example 2
    assert evals.fewshot_indices(5, 2, 2) == [4, 3]
    spec = evals.TaskSpec("t", "t.jsonl", "language_modeling", 2, " ")
    seqs, spans = evals.prepare_example(data, 2, spec, gpt2, None)
    assert gpt2.decode(seqs[0]) == "<|endoftext|>Fact 4: v4\n\nFact 3: v3\n\nFact 2: v2"
    assert gpt2.decode(seqs[0][spans[0][0]:spans[0][1]]) == " v2"
    for n, k in [(7, 3), (40, 10), (11, 10)]:
        for idx in range(n):
            assert evals.fewshot_indices(n, idx, k) == random.Random(1234 + idx).sample([i for i in range(n) if i != idx], k)


def test_spans_bos_first_and_left_crop(gpt2):
    spec = evals.TaskSpec("t", "t.jsonl", "multiple_choice", 0, "\nAnswer: ")
    item = [{"query": "Which is a colour?", "choices": ["red", "tree"], "gold": 0}]
    seqs, spans = evals.prepare_example(item, 0, spec, gpt2, None)
    assert all(s[0] == bos_id(gpt2) for s in seqs)
    assert [gpt2.decode(s[a:b]) for s, (a, b) in zip(seqs, spans)] == [" red", " tree"]
    short, sp = evals.prepare_example(item, 0, spec, gpt2, 4)   # a context of 4 tokens keeps the last 4
    assert all(len(s) == 4 for s in short)
    assert [s[a:b] for s, (a, b) in zip(short, sp)] == [s[a:b] for s, (a, b) in zip(seqs, spans)]


# ------------------------------------------------------------------ oracle and uniform models

class NgramOracle(torch.nn.Module):
    "A model that knows the gold token sequences: wherever the last n tokens match one, all its mass goes on the next token."
    def __init__(self, sequences, vocab_size, n=12, max_seq_len=None):
        super().__init__()
        self.n, self.V, self.max_seq_len = n, vocab_size, max_seq_len
        self.register_buffer("anchor", torch.zeros(1))   # gives the module a device
        self.table = {}
        for s in sequences:
            for t in range(len(s) - 1):     # near the start the key is the whole prefix (BOS first)
                self.table.setdefault(tuple(s[max(0, t - n + 1):t + 1]), s[t + 1])

    def forward(self, idx):
        B, T = idx.shape
        assert self.max_seq_len is None or T <= self.max_seq_len, "the evaluator must crop to the model's context"
        out = torch.zeros(B, T, self.V, dtype=torch.bfloat16)
        for b, row in enumerate(idx.tolist()):
            for t in range(T):
                nxt = self.table.get(tuple(row[max(0, t - self.n + 1):t + 1]))
                if nxt is not None: out[b, t, nxt] = 100.0
        return out


class Uniform(torch.nn.Module):
    "The same logits for every token everywhere."
    def __init__(self, vocab_size):
        super().__init__(); self.V = vocab_size
    def forward(self, idx):
        return torch.zeros(1, 1, self.V).expand(*idx.shape, self.V)


def known_sequences(bundle, enc, labels, max_per_task, which="gold"):
    "Token sequences of the prompt ending in the gold answer (or, which='wrong', the next choice), built independently of task_data."
    specs = {s.label: s for s in evals.read_suite(bundle)[0]}
    out = []
    for label in labels:
        spec = specs[label]
        rows = [json.loads(line) for line in open(bundle / "eval_data" / spec.dataset_uri, encoding="utf-8")]
        random.Random(1337).shuffle(rows)
        rows = rows[:max_per_task]
        for idx, item in enumerate(rows):
            k = min(spec.num_fewshot, len(rows) - 1)
            shots = [rows[j] for j in random.Random(1234 + idx).sample([j for j in range(len(rows)) if j != idx], k)]
            prompts = evals.RENDER[spec.task_type](item, spec.delimiter, shots)
            if spec.task_type == "language_modeling": text = prompts[1]
            else: text = prompts[item["gold"] if which == "gold" else (item["gold"] + 1) % len(prompts)]
            out.append([bos_id(enc)] + enc.encode_ordinary(text))
    return out


def test_oracle_scores_100_percent_on_every_task_type(bundle, gpt2):
    labels = ["copa", "hellaswag_zeroshot", "arc_easy", "winograd", "winogrande", "lambada_openai", "jeopardy", "bigbench_qa_wikidata"]
    n = {"arc_easy": 6, "jeopardy": 6, "bigbench_qa_wikidata": 12}
    for group in (["arc_easy"], ["jeopardy"], ["bigbench_qa_wikidata"], [l for l in labels if l not in n]):
        m = max(n.get(l, 20) for l in group)
        oracle = NgramOracle(known_sequences(bundle, gpt2, group, m), gpt2.n_vocab, max_seq_len=300)  # 10-shot prompts get cropped
        res = evals.evaluate_core(oracle, gpt2, bundle, max_per_task=m, tasks=group, batch_tokens=2048)
        for label in group:
            assert res["tasks"][label]["accuracy"] == 1.0, (label, res["tasks"][label])
            assert res["tasks"][label]["centered"] == 1.0


def test_oracle_of_the_wrong_answer_scores_zero(bundle, gpt2):
    labels = ["copa", "winograd"]
    oracle = NgramOracle(known_sequences(bundle, gpt2, labels, 20, which="wrong"), gpt2.n_vocab)
    res = evals.evaluate_core(oracle, gpt2, bundle, max_per_task=20, tasks=labels)
    assert all(r["accuracy"] == 0.0 for r in res["tasks"].values())


def gold_zero_share(bundle, label, suite="core"):
    "The share of a task's records whose gold is choice 0, read straight from its file."
    spec = next(s for s in evals.read_suite(bundle, suite)[0] if s.label == label)
    rows = [json.loads(l) for l in open(evals.task_file(bundle, spec.dataset_uri), encoding="utf-8")]
    return sum(r["gold"] == 0 for r in rows) / len(rows), len(rows)


def check_uniform(bundle, enc, labels):
    # equal losses everywhere (fp64 sums of equal fp32 terms are exact): the argmin is always choice 0,
    # so accuracy is exactly the share of gold == 0, and never a single exact match on language modeling
    res = evals.evaluate_core(Uniform(enc.n_vocab), enc, bundle, tasks=labels, batch_tokens=8192)
    for label in labels:
        share, n = gold_zero_share(bundle, label)
        r = res["tasks"][label]
        assert r["examples"] == n and r["accuracy"] == pytest.approx(share, abs=1e-6), (label, r, share)
    lm = evals.evaluate_core(Uniform(enc.n_vocab), enc, bundle, tasks=["lambada_openai"], max_per_task=100)
    assert lm["tasks"]["lambada_openai"]["accuracy"] == 0.0
    return res


def test_uniform_model_scores_the_share_of_gold_zero(bundle, gpt2):
    res = check_uniform(bundle, gpt2, ["openbook_qa", "copa", "winograd"])
    assert 0.1 < res["tasks"]["openbook_qa"]["accuracy"] < 0.45     # a real mix, near the 25 % baseline


def test_full_suite_reports_the_missing_file_and_labels_the_score(bundle, gpt2):
    res = evals.evaluate_core(Uniform(gpt2.n_vocab), gpt2, bundle, max_per_task=2)
    present = [s.label for s in evals.read_suite(bundle)[0] if (bundle / "eval_data" / s.dataset_uri).exists()]
    assert len(present) == 21 and res["label"] == "CORE-21" and res["missing"] == ["coqa"]
    assert sorted(res["missing"]) == sorted({s.label for s in evals.read_suite(bundle)[0]} - set(present))
    assert list(res["tasks"]) == present
    assert res["score"] == pytest.approx(sum(r["centered"] for r in res["tasks"].values()) / len(present))


def test_full_bundle_every_core_file_loads_and_the_uniform_model_is_exact(full_bundle, gpt2):
    specs, skipped = evals.read_suite(full_bundle)
    assert len(specs) == 22 and not skipped
    for s in specs:      # every record of every present file is well-formed, and the mini bundle is a subset of it
        path = full_bundle / "eval_data" / s.dataset_uri
        if not path.exists(): continue
        rows = evals.load_jsonl(path, s.task_type)
        mini = evals.find_bundle(evals.MINI_BUNDLE_ASSET) / "eval_data" / s.dataset_uri
        assert len(mini.read_text(encoding="utf-8").splitlines()) == min(100, len(rows)), s.label
    check_uniform(full_bundle, gpt2, ["copa", "openbook_qa"])


def test_full_bundle_gauntlet_files_resolve(full_bundle):
    specs, skipped = evals.read_suite(full_bundle, "gauntlet")     # the bundle's gauntlet.yaml, else the mini bundle's
    assert len(specs) == 41 and len(skipped) == 5
    for s in specs:
        try: path = evals.task_file(full_bundle, s.dataset_uri)
        except FileNotFoundError as e: pytest.skip(f"needs the downloadable asset {evals.GAUNTLET_ASSET}/{s.dataset_uri}: {e}")
        assert path is not None and path.stat().st_size > 0, s.label


# ------------------------------------------------------------------ CORE arithmetic

def test_centered_and_core_reproduce_the_reference_csvs(bundle):
    specs = {s.label: s for s in evals.read_suite(bundle)[0]}
    refs = sorted(bundle.glob("openai-community-gpt2*.csv"))
    assert len(refs) == 4
    for ref in refs:
        rows = [[c.strip() for c in r] for r in csv.reader(ref.open())][1:]
        accs = {r[0]: float(r[1]) for r in rows if r[0] != "CORE"}
        cents = {r[0]: float(r[2]) for r in rows if r[0] != "CORE"}
        assert set(accs) == set(specs)
        mine = {t: evals.centered_accuracy(a, specs[t].baseline) for t, a in accs.items()}
        for t in accs:   # the csv rounds both columns to 6 decimals
            assert abs(mine[t] - cents[t]) <= 5e-7 / (1 - specs[t].baseline / 100) + 5e-7 + 1e-12, (ref.name, t)
        core = sum(mine.values()) / len(mine)
        assert abs(core - float(next(r[2] for r in rows if r[0] == "CORE"))) < 2e-6, ref.name
    assert evals.suite_label("core", specs, specs) == "CORE"
    assert evals.suite_label("core", list(specs)[:20], specs) == "CORE-20"


# ------------------------------------------------------------------ bad input

def test_bad_records_and_task_types_name_file_and_line(tmp_path, gpt2):
    good = [{"query": "a", "choices": ["b", "c"], "gold": 0}]
    cases = [
        ('{"query": "a", "choices": ["b", "c"], "gold": 0}\n{"query": "a", "choices": ["b"\n', ":2: not valid JSON"),
        ('{"query": "a", "choices": ["b", "c"]}\n', ":1: multiple_choice record is missing 'gold'"),
        ('\n\n{"query": "a", "choices": ["b", "c"], "gold": 2}\n', ":3: 'gold' must be an index into 'choices' (0..1), got 2"),
        ('{"query": 5, "choices": ["b", "c"], "gold": 0}\n', ":1: 'query' must be a string"),
        ('[1, 2]\n', ":1: expected a JSON object"),
    ]
    for i, (text, msg) in enumerate(cases):
        root = write_bundle(tmp_path / f"b{i}", {"mc": ("multiple_choice", 0, " ", 50, good)})
        path = root / "eval_data" / "t" / "mc.jsonl"
        path.write_text(text)
        with pytest.raises(ValueError) as e:
            evals.evaluate_core(Uniform(gpt2.n_vocab), gpt2, root)
        assert str(e.value).startswith(f"{path}{msg}"), str(e.value)
    for ttype, field in [("schema", "'context_options'"), ("language_modeling", "'continuation'")]:
        root = write_bundle(tmp_path / ttype, {"t1": (ttype, 0, " ", 0, [{"context": "x", "gold": 0}])})
        with pytest.raises(ValueError, match=f"t1.jsonl:1: {ttype} record is missing .*{field}"):
            evals.evaluate_core(Uniform(gpt2.n_vocab), gpt2, root)
    # an unknown task type is an error naming the yaml file and the line of its entry
    root = write_bundle(tmp_path / "unknown", {"mc": ("multiple_choice", 0, " ", 50, good), "odd": ("ranking", 0, " ", 0, good)})
    with pytest.raises(ValueError) as e:
        evals.read_suite(root)
    assert str(e.value).startswith(f"{root / 'core.yaml'}:9: task 'odd' has unknown icl_task_type 'ranking'")
    assert (root / "core.yaml").read_text().splitlines()[8] == "  label: odd"
    # a known generation type is skipped with a reason, not silently dropped
    root = write_bundle(tmp_path / "gen", {"mc": ("multiple_choice", 0, " ", 50, good), "gen": ("generation_task_with_answers", 0, " ", 0, None)})
    res = evals.evaluate_core(Uniform(gpt2.n_vocab), gpt2, root)
    assert list(res["tasks"]) == ["mc"] and "gen" in res["skipped"]
    with pytest.raises(ValueError, match="unknown task.*nope.*choose from: mc"):
        evals.evaluate_core(Uniform(gpt2.n_vocab), gpt2, root, tasks="mc,nope")


def test_missing_file_is_left_out_and_the_label_says_so(tmp_path, gpt2):
    mc = [{"query": f"{i} +1 =", "choices": [str(i + 1), str(i + 2)], "gold": 0} for i in range(10)]
    lm = [{"context": f"{i} +1 =", "continuation": str(i + 1)} for i in range(10)]
    root = write_bundle(tmp_path / "b", {"mc": ("multiple_choice", 2, " ", 50, mc), "gone": ("language_modeling", 0, " ", 0, None),
                                         "lm": ("language_modeling", 3, " ", 0, lm)})
    res = evals.evaluate_core(Uniform(gpt2.n_vocab), gpt2, root, max_per_task=4)
    assert res["missing"] == ["gone"] and list(res["tasks"]) == ["mc", "lm"] and res["label"] == "CORE-2"
    assert res["tasks"]["mc"]["examples"] == 4 and "gone" in evals.format_table(res)


# ------------------------------------------------------------------ bits per byte

def test_bpb_matches_a_naive_loop(gpt2):
    torch.manual_seed(0)
    m = GPT(GPTConfig.from_depth(1, vocab_size=gpt2.n_vocab, seq_len=32)).eval()
    tb = token_bytes(gpt2)
    ids = torch.tensor([bos_id(gpt2)] + gpt2.encode_ordinary("Bits per byte does not care how the text was cut into tokens. " * 8))
    x, y = ids[:96].view(3, 32), ids[1:97].clone().view(3, 32)
    y[0, :4] = -1
    nats = nbytes = 0.0
    with torch.no_grad():
        logp = torch.log_softmax(m(x).double(), -1)
    for b in range(3):
        for t in range(32):
            tok = y[b, t].item()
            if tok >= 0 and tb[tok] > 0:
                nats -= logp[b, t, tok].item(); nbytes += tb[tok].item()
    from vibenanochat import trainer               # evaluate_bpb is the trainer's; the evals chapter re-exports it
    assert evals.evaluate_bpb is trainer.evaluate_bpb
    assert trainer.evaluate_bpb(m, [(x[:2], y[:2]), (x[2:], y[2:])], tb) == pytest.approx(nats / (nbytes * 0.6931471805599453), rel=1e-6)
    with pytest.raises(ValueError, match="no batches"):
        trainer.evaluate_bpb(m, [], tb)


# ------------------------------------------------------------------ 2 processes = 1 process

WORKER = r'''
import json, sys, torch, torch.distributed as dist
from vibenanochat import evals, tokenizer
class Bigram(torch.nn.Module):
    def __init__(self, V):
        super().__init__(); self.emb = torch.nn.Embedding(V, 8); self.out = torch.nn.Linear(8, V)
    def forward(self, idx): return self.out(self.emb(idx))
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
enc = tokenizer.get_tokenizer(sys.argv[1])
torch.manual_seed(0)
m = Bigram(enc.n_vocab)
res = evals.evaluate_core(m, enc, sys.argv[2], max_per_task=40, tasks=["copa", "winograd", "lambada_openai", "bigbench_qa_wikidata"], batch_tokens=1024)
spec = next(s for s in evals.read_suite(sys.argv[2])[0] if s.label == "copa")
vec = evals.evaluate_task(m, enc, evals.task_data(sys.argv[2], spec, 40), spec).tolist()
ids = torch.tensor(enc.encode_ordinary(open(sys.argv[4]).read()[:20000]))
batches = [(ids[i:i + 64].view(2, 32), ids[i + 1:i + 65].view(2, 32)) for i in range(0, 64 * 10, 64)]
bpb = evals.evaluate_bpb(m, batches[rank::world], tokenizer.token_bytes(enc))
if rank == 0:
    json.dump({"acc": {k: v["accuracy"] for k, v in res["tasks"].items()}, "label": res["label"], "copa": vec, "bpb": bpb}, open(sys.argv[3], "w"))
dist.destroy_process_group()
'''


def test_two_processes_equal_one(tmp_path, bundle):
    gpt2_files, text = need_asset("tokenizers/gpt2"), need_asset("text/tiny_shakespeare_input.txt")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = {}
    for k in (1, 2):
        out[k] = tmp_path / f"out{k}.json"
        r = torchrun(k, script, gpt2_files, bundle, out[k], text, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    one, two = (json.loads(out[k].read_text()) for k in (1, 2))
    assert one["acc"] == two["acc"] and one["copa"] == two["copa"] and one["label"] == two["label"] == "CORE-4"
    assert len(one["copa"]) == 40 and 0 < sum(one["copa"]) < 40     # a real mix of right and wrong answers
    assert two["bpb"] == pytest.approx(one["bpb"], rel=1e-12)


# ------------------------------------------------------------------ bundle and gauntlet downloads

def test_bundle_is_downloaded_unpacked_and_found(tmp_path, monkeypatch):
    box = sandbox(tmp_path, monkeypatch)
    src = write_bundle(box / "src" / "eval_bundle", {"mc": ("multiple_choice", 0, " ", 50, [{"query": "a", "choices": ["b", "c"], "gold": 0}])})
    zpath = box / "srv" / "eval_bundle.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w") as z:      # the zip nests everything under eval_bundle/, like nanochat's
        for p in src.rglob("*"): z.write(p, p.relative_to(src.parent))
    with Server(zpath.parent) as s:
        assets.REGISTRY[evals.BUNDLE_ASSET] = assets.Asset(f"{s.url}/eval_bundle.zip", None, "test", unzip=True, marker="core.yaml")
        got = evals.find_bundle()
    assert got == box / "cache" / "eval_bundle" and (got / "eval_data" / "t" / "mc.jsonl").exists()
    assert evals.find_bundle() == got                       # found now: no second download (the server is gone)
    assert evals.find_bundle(evals.BUNDLE_ASSET) == got     # by name
    assert evals.find_bundle(evals.MINI_BUNDLE_ASSET).resolve() == REPO / "data" / "eval_bundle_mini"
    with pytest.raises(FileNotFoundError, match="has no core.yaml: pass --bundle"):
        evals.find_bundle(box / "nowhere")


def test_gauntlet_file_missing_from_the_bundle_is_fetched_checked_or_named(tmp_path, monkeypatch, gpt2):
    box = sandbox(tmp_path, monkeypatch)
    # nanochat's zip: core.yaml and the CORE files only, no gauntlet.yaml, no gauntlet task files
    mini = evals.find_bundle(evals.MINI_BUNDLE_ASSET)
    b = box / "zip_bundle"
    (b / "eval_data").mkdir(parents=True)
    for name in ("core.yaml", "eval_meta_data.csv"): shutil.copy(mini / name, b / name)
    served = box / "srv" / "siqa.jsonl"
    served.parent.mkdir()
    served.write_bytes((mini / "eval_data" / "commonsense_reasoning" / "siqa.jsonl").read_bytes())
    name = f"{evals.GAUNTLET_ASSET}/commonsense_reasoning/siqa.jsonl"
    with Server(served.parent) as s:
        assets.REGISTRY[name] = assets.Asset(f"{s.url}/siqa.jsonl", hashlib.sha256(served.read_bytes()).hexdigest(), "test")
        res = evals.evaluate_core(Uniform(gpt2.n_vocab), gpt2, b, tasks=["siqa"], suite="gauntlet")
        assert res["label"] == "GAUNTLET-1" and res["tasks"]["siqa"]["examples"] == 100
        assert res["tasks"]["siqa"]["accuracy"] == pytest.approx(gold_zero_share(mini, "siqa", "gauntlet")[0], abs=1e-6)
        assert (box / "cache" / name).read_bytes() == served.read_bytes()
        # a file that is not the pinned one is refused: one line naming the asset and its URL
        other = f"{evals.GAUNTLET_ASSET}/world_knowledge/bigbench_misconceptions.jsonl"
        assets.REGISTRY[other] = assets.Asset(f"{s.url}/siqa.jsonl", "0" * 64, "test")
        with pytest.raises(FileNotFoundError) as e:
            evals.evaluate_core(Uniform(gpt2.n_vocab), gpt2, b, tasks=["bigbench_misconceptions"], suite="gauntlet")
    msg = str(e.value)
    assert "\n" not in msg and other in msg and f"{s.url}/siqa.jsonl" in msg, msg
    assert not (box / "cache" / other).exists()
    # offline: the same kind of line
    assets.REGISTRY[other] = assets.Asset("http://127.0.0.1:9/bigbench_misconceptions.jsonl", "0" * 64, "test")
    with pytest.raises(FileNotFoundError, match="bigbench_misconceptions.jsonl.*127.0.0.1:9"):
        evals.evaluate_core(Uniform(gpt2.n_vocab), gpt2, b, tasks=["bigbench_misconceptions"], suite="gauntlet")


# ------------------------------------------------------------------ the CLI

def test_cli_on_a_saved_checkpoint_one_and_two_processes(tmp_path, bundle, gpt2):
    def ckpt(name, with_tokenizer):    # the same random depth-1 GPT both times, step 7
        return tiny_checkpoint(tmp_path / name, gpt2, step=7, spread=False, meta_tokenizer="gpt2", tokenizer_json=with_tokenizer)
    a = ckpt("ckpt_a", with_tokenizer=True)     # tokenizer.json inside the checkpoint
    b = ckpt("ckpt_b", with_tokenizer=False)    # meta["tokenizer"] = "gpt2": GPT-2's files found through the asset resolver
    assert not (b / "tokenizer.json").exists()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--tasks", "copa,winograd,lambada_openai", "--max-per-task", "12", "--bundle", str(bundle)]
    r = subprocess.run([sys.executable, "-m", "vibenanochat.evals", "--checkpoint", str(a), *args],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for col in ("accuracy", "centered", "examples", "seconds"): assert col in r.stdout
    assert "CORE-3:" in r.stdout and "winograd" in r.stdout
    rep = json.loads((a / "core_eval.json").read_text())
    assert rep["label"] == "CORE-3" and rep["step"] == 7 and set(rep["tasks"]) == {"copa", "winograd", "lambada_openai"}
    rows = list(csv.reader((a / "core_eval.csv").open()))
    assert [x[0] for x in rows] == ["task", "copa", "lambada_openai", "winograd", "CORE-3"]   # core.yaml order
    assert float(rows[1][4]) == pytest.approx(rep["tasks"]["copa"]["accuracy"], abs=1e-6)
    # the path form under torchrun, 2 ranks, report elsewhere: the same numbers
    r2 = torchrun(2, REPO / "vibenanochat" / "evals.py", "--checkpoint", b, *args[:-1], "eval_bundle_mini",   # the bundle by name
                  "--out", tmp_path / "rep2", cwd=tmp_path, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    rep2 = json.loads((tmp_path / "rep2" / "core_eval.json").read_text())
    assert rep2["world_size"] == 2
    assert {k: v["accuracy"] for k, v in rep2["tasks"].items()} == {k: v["accuracy"] for k, v in rep["tasks"].items()}


def test_cli_offline_without_a_bundle_names_the_asset_url_and_flag(tmp_path):
    env = dict(os.environ, VNC_DATA_DIR=str(tmp_path / "nothing"), VNC_CACHE_DIR=str(tmp_path / "cache"),
               HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")   # nothing listens there: offline, even in CI
    r = subprocess.run([sys.executable, "-m", "vibenanochat.evals", "--checkpoint", str(tmp_path / "ckpt")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    msg = r.stderr.strip().splitlines()[-1]      # (pooch may log the attempted download on the line before)
    assert "eval_bundle.zip" in msg and "data/eval_bundle" in msg and "--bundle" in msg, r.stderr


# ------------------------------------------------------------------ CORE inside a training run

def test_train_scores_core_mid_run_into_metrics(tmp_path):
    import vibenanochat.data as data
    import vibenanochat.tokenizer as tok
    text = tmp_path / "shakespeare.txt"       # a slice of Tiny Shakespeare and a 512-token BPE: fast CPU steps
    text.write_text(need_asset("text/tiny_shakespeare_input.txt").read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    enc = tok.train_tokenizer(data.read_local(text), 512)
    data.prepare(str(text), tmp_path / "shards", tokenizer=enc, progress=False)
    args = ["--depth", "1", "--seq-len", "64", "--device-batch-size", "4", "--total-batch-size", "256",
            "--num-iterations", "6", "--eval-every", "6", "--eval-tokens", "512", "--save-every", "6", "--log-every", "1",
            "--compile", "off", "--dtype", "fp32", "--device", "cpu",
            "--core-every", "3", "--core-max-per-task", "4", "--core-bundle", evals.MINI_BUNDLE_ASSET,
            "--data-dir", str(tmp_path / "shards"), "--log-dir", str(tmp_path / "logs"), "--run-name", "core"]
    r = subprocess.run([sys.executable, "-m", "vibenanochat.train", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    recs = [json.loads(l) for l in (tmp_path / "logs" / "core" / "metrics.jsonl").read_text().splitlines()]
    core = [x for x in recs if "core_tasks" in x]
    assert [x["step"] for x in core] == [3, 6]                     # mid-run, then at the end
    labels = [s.label for s in evals.read_suite(evals.find_bundle(evals.MINI_BUNDLE_ASSET))[0] if s.label != "coqa"]
    for x in core:
        assert x["core_label"] == "CORE-21" and sorted(x["core_tasks"]) == sorted(labels)
        assert all(math.isfinite(v) and -2 <= v <= 1 for v in x["core_tasks"].values()), x
        assert x["core"] == pytest.approx(sum(x["core_tasks"].values()) / 21)
    assert recs[-1]["event"] == "end" and recs[-1]["core"] == pytest.approx(core[-1]["core"])
