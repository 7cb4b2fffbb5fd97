"""Data preparation: CLI on the shared corpora, determinism, crash and resume, bad input, the hub code
against a local HTTP server standing in for the Hugging Face hub, and the offline default."""
import json
import os
import subprocess
import sys
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken

from conftest import REPO, need_shared
import vibenanochat.data as data
from vibenanochat.dataloader import DataLoader
from vibenanochat.tokenizer import bos_id, get_tokenizer, tokenizer_hash, train_tokenizer

SMALL = dict(shard_docs=512, val_docs=128, window_docs=2048, progress=False)


@pytest.fixture(scope="module")
def gpt2():
    return get_tokenizer(need_shared("tokenizers", "gpt2"))


def docs_of(folder: Path) -> list[np.ndarray]:
    m = data.load_manifest(folder)
    return [d for f in m["train_shards"] + [m["val_shard"]] for d in data.read_shard(folder / f)]


def texts_of(folder: Path, enc) -> list[str]:
    return [enc.decode(d[1:].tolist()) for d in docs_of(folder)]


def cli(*args, env=None, cwd=REPO, module=True):
    e = dict(os.environ, VNC_TOKENIZER_DIR=str(need_shared("tokenizers", "gpt2")), **(env or {}))
    cmd = [sys.executable, "-m", "vibenanochat.data"] if module else [sys.executable, str(REPO / "vibenanochat" / "data.py")]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=e, cwd=cwd, timeout=300)


def test_cli_shared_corpora_to_shards_the_loader_reads(tmp_path, gpt2):
    fw, sh = need_shared("text", "fineweb_edu_sample"), need_shared("text", "tiny_shakespeare_input.txt")
    r = cli(fw, "--out", tmp_path / "fw", "--quiet")                              # the module form
    assert r.returncode == 0, r.stderr
    r = cli(sh, "--out", tmp_path / "sh", "--shard-docs", 1024, "--quiet", module=False)  # the path form, dashes
    assert r.returncode == 0, r.stderr
    pages = list(data.read_jsonl(fw / "fineweb_edu_sample150.jsonl"))
    assert sorted(texts_of(tmp_path / "fw", gpt2)) == sorted(pages)  # 150 pages once each (parquet copy deduplicated)
    speeches = list(data.read_txt(sh))
    assert sorted(texts_of(tmp_path / "sh", gpt2)) == sorted(set(speeches))
    for name in ("fw", "sh"):
        d = tmp_path / name
        m = json.loads((d / "manifest.json").read_text())
        assert m["tokenizer"] == "gpt2" and m["tokenizer_hash"] == tokenizer_hash(gpt2) and m["dtype"] == "uint16"
        assert sorted(p.name for p in d.glob("shard_*.parquet"))[-1] == m["val_shard"]
        assert m["tokens"]["train"] == sum(len(x) for f in m["train_shards"] for x in data.read_shard(d / f))
        assert all(doc[0] == 50256 and 50256 not in doc[1:] for doc in docs_of(d))
        x, y = next(DataLoader(d, B=2, T=64, prefetch=0))
        assert x.shape == (2, 64) and (x[:, 0] == 50256).all()
    assert m["documents"]["val"] == len(set(speeches)) // 10 and len(m["train_shards"]) > 3


def test_seed_decides_the_order_only(tmp_path, gpt2):
    sh = need_shared("text", "tiny_shakespeare_input.txt")
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        data.prepare(str(sh), tmp_path / name, gpt2, seed=seed, **SMALL)
    files = sorted(p.name for p in (tmp_path / "a").glob("*.parquet"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    a, c = texts_of(tmp_path / "a", gpt2), texts_of(tmp_path / "c", gpt2)
    assert a != c and sorted(a) == sorted(c)


def test_crash_then_resume_skips_finished_windows_and_matches(tmp_path, gpt2):
    sh = need_shared("text", "tiny_shakespeare_input.txt")
    data.write_shards(data.read_txt(sh), tmp_path / "clean", gpt2, source="s", **SMALL)

    def dies(texts, n):
        for i, t in enumerate(texts):
            if i == n:
                raise RuntimeError("simulated crash")
            yield t

    with pytest.raises(RuntimeError):
        data.write_shards(dies(data.read_txt(sh), 5000), tmp_path / "crash", gpt2, source="s", **SMALL)
    prog = json.loads((tmp_path / "crash" / "_progress.json").read_text())
    assert prog["windows_done"] == 2 and not (tmp_path / "crash" / "manifest.json").exists()
    assert not list((tmp_path / "crash").glob("*.tmp"))
    with pytest.raises(SystemExit, match="unfinished"):
        DataLoader(tmp_path / "crash", 2, 16)
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "crash").glob("shard_*.parquet")}
    data.write_shards(data.read_txt(sh), tmp_path / "crash", gpt2, source="s", **SMALL)
    assert all((tmp_path / "crash" / f).stat().st_mtime_ns == t for f, t in done.items())  # not rewritten
    clean = sorted(p.name for p in (tmp_path / "clean").iterdir())
    assert sorted(p.name for p in (tmp_path / "crash").iterdir()) == clean
    for f in clean:
        if f.endswith(".parquet"):
            assert (tmp_path / "crash" / f).read_bytes() == (tmp_path / "clean" / f).read_bytes()
    # a crash after the validation shard was renamed but before the manifest: the re-run finishes it
    (tmp_path / "crash" / "manifest.json").unlink()
    (tmp_path / "crash" / "_progress.json").write_text(json.dumps(prog | {"windows_done": 99, "exhausted": True,
        "shards": json.loads((tmp_path / "clean" / "manifest.json").read_text())["shards"][:-1],
        "val": json.loads((tmp_path / "clean" / "manifest.json").read_text())["shards"][-1]}))
    m = data.write_shards(data.read_txt(sh), tmp_path / "crash", gpt2, source="s", **SMALL)
    assert m["val_shard"] == json.loads((tmp_path / "clean" / "manifest.json").read_text())["val_shard"]


def test_bad_input_one_line_errors_nothing_written(tmp_path, gpt2):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "nocol.parquet")
    (tmp_path / "one.jsonl").write_text('{"text": "only one"}\n')
    (tmp_path / "notjson.jsonl").write_text('{"text": "ok"}\nnot json\n')
    cases = {"empty.txt": "holds no documents", "nofield.jsonl": "has no 'text' field (it has: body): pass --text-field",
             "nocol.parquet": "has no 'text' field (it has: content)", "one.jsonl": "only 1 document",
             "notjson.jsonl": "line 2 is not JSON", "missing.txt": "no such file or folder", "x.csv": "unsupported"}
    (tmp_path / "x.csv").write_text("a,b\n")
    for name, msg in cases.items():
        with pytest.raises(SystemExit, match=msg.replace("(", r"\(").replace(")", r"\)")):
            data.prepare(str(tmp_path / name), tmp_path / ("out_" + name), gpt2, progress=False)
        assert not (tmp_path / ("out_" + name)).exists()
    # the same through the CLI: one line on stderr, exit status 1
    r = cli(tmp_path / "nofield.jsonl", "--out", tmp_path / "o")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "--text-field" in r.stderr


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, gpt2):
    good = "\n\n".join(f"paragraph {i} caf\u00e9" for i in range(30))
    raw = good.encode() + b"\n\nbroken \xff\xfe here and \xc3 there\n\nlast"
    (tmp_path / "t.txt").write_bytes(raw)
    m = data.prepare(str(tmp_path / "t.txt"), tmp_path / "o", gpt2, progress=False)
    assert m["read"]["replaced"] == 3 and m["documents"]["train"] + m["documents"]["val"] == 32
    assert "broken \ufffd\ufffd here and \ufffd there" in texts_of(tmp_path / "o", gpt2)


def test_other_tokenizer_or_settings_refused(tmp_path, gpt2):
    sh = need_shared("text", "tiny_shakespeare_input.txt")
    data.prepare(str(sh), tmp_path / "o", gpt2, max_docs=600, **SMALL)
    bpe = train_tokenizer(data.read_txt(sh), 300)
    with pytest.raises(SystemExit, match="prepared with tokenizer gpt2"):
        data.prepare(str(sh), tmp_path / "o", bpe, max_docs=600, **SMALL)
    with pytest.raises(SystemExit, match="other settings .*max_docs 600 there, 700 now"):
        data.prepare(str(sh), tmp_path / "o", gpt2, max_docs=700, **SMALL)
    with pytest.raises(SystemExit, match="tokenized with gpt2, not bpe300"):
        DataLoader(tmp_path / "o", 2, 16, tokenizer=bpe)
    r = cli(sh, "--out", tmp_path / "o", "--max-docs", 600, "--shard-docs", 512, "--val-docs", 128)
    assert r.returncode == 1 and "other settings" in r.stderr  # the CLI's window is 16 shards, not 2048 docs
    # the same command again: nothing to do
    assert data.prepare(str(sh), tmp_path / "o", gpt2, max_docs=600, **SMALL)["documents"]["train"] == 540
    (tmp_path / "foreign").mkdir()
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "foreign" / "shard_00000.parquet")
    with pytest.raises(SystemExit, match="without a manifest"):
        data.prepare(str(sh), tmp_path / "foreign", gpt2, **SMALL)


def test_large_vocab_uses_uint32(tmp_path):
    big = tiktoken.Encoding("big", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={"<|endoftext|>": 70_000})
    assert data.token_dtype(big) == np.uint32 and bos_id(big) == 70_000
    m = data.write_shards([f"doc {i}" for i in range(20)], tmp_path / "o", big, source="x", progress=False)
    assert m["dtype"] == "uint32"
    assert sorted(bytes(d[1:].astype(np.uint8)).decode() for d in docs_of(tmp_path / "o")) == sorted(f"doc {i}" for i in range(20))
    assert {int(d[0]) for d in docs_of(tmp_path / "o")} == {70_000}


def test_max_docs_and_max_tokens_caps(tmp_path, gpt2):
    sh = need_shared("text", "tiny_shakespeare_input.txt")
    m = data.prepare(str(sh), tmp_path / "d", gpt2, max_docs=1000, **SMALL)
    assert m["documents"]["train"] + m["documents"]["val"] == 1000
    m = data.prepare(str(sh), tmp_path / "t", gpt2, max_tokens=20_000, **SMALL)
    total = m["tokens"]["train"] + m["tokens"]["val"]
    assert 20_000 <= total < 20_000 + max(len(d) for d in docs_of(tmp_path / "t"))


# --- the hub code, against a local server that speaks the same HTTP as the Hugging Face hub ---

class FakeHub(BaseHTTPRequestHandler):
    files: dict = {}
    log: list = []
    drop_first: set = set()  # file paths whose first full download is cut half-way

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.log.append((self.path, self.headers.get("Range")))
        api = "/api/datasets/HuggingFaceFW/fineweb-edu/tree/main/sample/10BT"
        if self.path.startswith(api):
            names = sorted(self.files)
            page = 1 if self.path.endswith("?page=2") else 0  # two pages, to exercise the Link header
            body = json.dumps([{"type": "file", "path": n, "size": len(self.files[n])} for n in names[page::2]]
                              + [{"type": "directory", "path": "sample/10BT/x"}]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if page == 0:
                self.send_header("Link", f'<http://{self.headers["Host"]}{api}?page=2>; rel="next"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        prefix = "/datasets/HuggingFaceFW/fineweb-edu/resolve/main/"
        path = self.path[len(prefix):]
        if not self.path.startswith(prefix) or path not in self.files:
            self.send_error(404)
            return
        blob, rng = self.files[path], self.headers.get("Range")
        if rng:
            a, b = rng.split("=")[1].split("-")
            a, b = int(a), int(b) if b else len(blob) - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(blob)}")
            part = blob[a:b + 1]
        else:
            self.send_response(200)
            part = blob
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if not rng and path in self.drop_first:
            self.drop_first.discard(path)
            self.wfile.write(part[:len(part) // 2])  # then the connection drops
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(part)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    src = need_shared("text", "fineweb_edu_sample", "fineweb_edu_sample150.parquet")
    texts = pq.read_table(src).column("text").to_pylist()
    files = {}
    for i, chunk in enumerate((texts[:80], texts[80:])):
        p = tmp_path / f"{i}.parquet"
        # incompressible padding makes the second file span several download chunks, so a cut is visible
        pad = [os.urandom(40_000 if i else 1) for _ in chunk]
        pq.write_table(pa.table({"text": chunk, "pad": pad}), p, row_group_size=10, compression="none")
        files[f"sample/10BT/{i:03d}_00000.parquet"] = p.read_bytes()
    FakeHub.files, FakeHub.log, FakeHub.drop_first = files, [], {"sample/10BT/001_00000.parquet"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("VNC_DATA_DIR", str(tmp_path / "data"))
    yield texts, files
    server.shutdown()


def test_fineweb_download_resumes_after_a_dropped_connection(hub, gpt2, tmp_path):
    texts, files = hub
    m = data.prepare("fineweb-edu", tmp_path / "fw", gpt2, config="sample-10BT", progress=False)
    assert sorted(texts_of(tmp_path / "fw", gpt2)) == sorted(t.strip() for t in texts)
    assert m["source"] == "HuggingFaceFW/fineweb-edu:sample-10BT"
    cache = tmp_path / "data" / "raw" / "fineweb-edu" / "sample-10BT"
    for path, blob in files.items():
        assert (cache / Path(path).name).read_bytes() == blob
    assert not list(cache.glob("*.part"))
    resumed = [r for p, r in FakeHub.log if p.endswith("001_00000.parquet") and r]
    assert len(resumed) == 1 and int(resumed[0][6:-1]) > 0  # the second request continued where the cut left off


def test_fineweb_stream_reads_only_row_groups(hub, gpt2, tmp_path):
    texts, files = hub
    m = data.prepare("fineweb-edu", tmp_path / "fw", gpt2, max_docs=30, progress=False)
    assert sorted(texts_of(tmp_path / "fw", gpt2)) == sorted(t.strip() for t in texts[:30])
    assert m["params"]["max_docs"] == 30
    gets = [(p, r) for p, r in FakeHub.log if "/resolve/" in p]
    assert gets and all(r is not None for _, r in gets)  # only Range requests: nothing downloaded whole
    assert all("001_00000" not in p for p, _ in gets)     # the second file was never touched
    assert not (tmp_path / "data" / "raw").exists()


def test_fineweb_offline_is_one_line(tmp_path):
    r = cli("fineweb-edu", "--max-tokens", 1000, "--out", tmp_path / "o", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("cannot reach the Hugging Face hub") and "DATA=" in last and "pydocs" in last
    assert not (tmp_path / "o").exists()


def test_default_corpus_offline_with_a_trained_bpe(tmp_path):
    "No GPT-2 anywhere: prepare_default trains a BPE on the docstrings, saves it, and the loader reads the folder."
    code = ("import vibenanochat.data as d, vibenanochat.dataloader as dl\n"
            "m = d.prepare_default(r'%s', max_tokens=30_000, bpe_vocab=600, progress=False)\n"
            "x, y = next(dl.DataLoader(m['dir'], 2, 32, prefetch=0))\n"
            "print(m['tokenizer'], m['vocab_size'], m['tokens']['train'] + m['tokens']['val'], int(x[0, 0]), int(x.max()))"
            % (tmp_path / "pd"))
    env = {k: v for k, v in os.environ.items() if k not in ("VNC_TOKENIZER_DIR",)}
    env.update(TIKTOKEN_CACHE_DIR=str(tmp_path / "empty"), HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    name, vocab, tokens, first, top = r.stdout.split()
    assert name == "bpe600" and vocab == "600" and int(tokens) >= 30_000 and first == "599" and int(top) < 600
    assert get_tokenizer(tmp_path / "pd").n_vocab == 600
