"""Data preparation: CLI on the project's corpora, a user's own books (pieces, both books in validation, the
summary line), determinism, crash and resume, bad input, the hub code path through huggingface_hub against a
local HTTP server standing in for the Hugging Face hub, and the offline `auto` default."""
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken

from conftest import REPO, need_asset
import vibenanochat.data as data
from vibenanochat.dataloader import DataLoader
from vibenanochat.tokenizer import bos_id, get_tokenizer, tokenizer_hash, train_tokenizer

SMALL = dict(shard_docs=512, val_docs=128, window_docs=2048, progress=False)
SHAKESPEARE = "text/tiny_shakespeare_input.txt"
NOVELS = ("text/public_domain/war_and_peace_pg2600.txt", "text/public_domain/anna_karenina_pg1399.txt")
DEAD = "http://127.0.0.1:9"  # nothing listens there: connections are refused at once
OFFLINE = dict(HTTPS_PROXY=DEAD, HTTP_PROXY=DEAD, https_proxy=DEAD, http_proxy=DEAD)


def docs_of(folder: Path) -> list[np.ndarray]:
    m = data.load_manifest(folder)
    return [d for f in m["train_shards"] + [m["val_shard"]] for d in data.read_shard(folder / f)]


def texts_of(folder: Path, enc, files=None) -> list[str]:
    m = data.load_manifest(folder)
    files = files or m["train_shards"] + [m["val_shard"]]
    return [enc.decode(d[1:].tolist()) for f in files for d in data.read_shard(folder / f)]


def cli(*args, env=None, cwd=REPO, module=True):
    e = dict(os.environ, **(env or {}))
    cmd = [sys.executable, "-m", "vibenanochat.data"] if module else [sys.executable, str(REPO / "vibenanochat" / "data.py")]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=e, cwd=cwd, timeout=300)


def test_cli_corpora_to_shards_the_loader_reads(tmp_path, gpt2):
    fw, sh = need_asset("text/fineweb_edu_sample"), need_asset(SHAKESPEARE)
    r = cli(fw, "--out", tmp_path / "fw", "--quiet")                              # the module form
    assert r.returncode == 0, r.stderr
    assert "150 exact duplicate" in r.stdout  # the parquet copy of the 150 pages, dropped and said
    r = cli(sh, "--out", tmp_path / "sh", "--shard-docs", 128, "--quiet", module=False)  # the path form, dashes
    assert r.returncode == 0, r.stderr
    pages = list(data.read_jsonl(fw / "fineweb_edu_sample150.jsonl"))
    assert sorted(texts_of(tmp_path / "fw", gpt2)) == sorted(pages)  # 150 pages once each (parquet copy deduplicated)
    pieces = list(data.read_txt(sh))
    assert "".join(pieces) == sh.read_text(encoding="utf-8") and max(map(len, pieces)) <= data.PIECE_CHARS
    assert sorted(texts_of(tmp_path / "sh", gpt2)) == sorted(pieces)  # every piece, newlines and all
    for name in ("fw", "sh"):
        d = tmp_path / name
        m = json.loads((d / "manifest.json").read_text())
        assert m["tokenizer"] == "gpt2" and m["tokenizer_hash"] == tokenizer_hash(gpt2) and m["dtype"] == "uint16"
        assert sorted(p.name for p in d.glob("shard_*.parquet"))[-1] == m["val_shard"]
        assert sorted(p.name for p in d.iterdir()) == sorted(m["train_shards"] + [m["val_shard"], "manifest.json", "tokenizer.json"])
        assert m["tokens"]["train"] == sum(len(x) for f in m["train_shards"] for x in data.read_shard(d / f))
        assert all(doc[0] == 50256 and 50256 not in doc[1:] for doc in docs_of(d))
        x, y = next(DataLoader(d, B=2, T=64, prefetch=0))
        assert x.shape == (2, 64) and (x[:, 0] == 50256).all()
    assert m["documents"]["val"] == len(pieces) // 10 and len(m["train_shards"]) > 3
    assert m["tokens_beyond_row"] == 0 and m["params"]["split"] == "file" and not m["warnings"]


def test_two_novels_both_in_train_and_validation(tmp_path):
    "The new user's run: two books, --tokenizer bpe:N; pieces keep paragraph breaks, validation samples both books."
    books = [need_asset(n) for n in NOVELS]
    r = cli(*books, "--out", tmp_path / "o", "--tokenizer", "bpe:1024")
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert out[0] == "tokenizer: a 1,024-token BPE trained on the corpus (--tokenizer bpe:1024)"
    summary = out[-1]
    assert "2,934 documents from 2 file(s), 2 cut at line breaks into pieces of at most 2,000 characters" in summary
    assert "dropped 0 empty and 0 exact duplicate document(s)" in summary and "0 tokens (0.0 %) lie beyond token 1,024" in summary
    enc = get_tokenizer(tmp_path / "o")
    assert enc.name == "bpe1024" and enc.n_vocab == 1024
    m = data.load_manifest(tmp_path / "o", enc)
    texts = [b.read_text(encoding="utf-8") for b in books]
    val = texts_of(tmp_path / "o", enc, [m["val_shard"]])
    train = texts_of(tmp_path / "o", enc, m["train_shards"])
    for part in (train, val):  # each piece is a verbatim slice of one book, and both books are in each split
        owner = [[i for i, t in enumerate(texts) if p in t] for p in part]
        assert all(len(o) >= 1 for o in owner) and {o[0] for o in owner} == {0, 1}
    # the pieces are the books, cut at line breaks: newlines and paragraph breaks survive the round trip
    assert sorted(train + val) == sorted(p for b in books for p in data.read_txt(b))
    assert sum("\n\n" in p.strip() for p in train) > 0.5 * len(train)
    # rows of a loader are different text, not the start of a whole book over and over
    dl = DataLoader(tmp_path / "o", B=8, T=256, prefetch=0)
    starts = [tuple(row[:32].tolist()) for _ in range(10) for row in next(dl)[0]]
    assert len(set(starts)) == len(starts)
    # whole files, the old way: one book is all of validation, and the loader crops nearly everything: said so
    r = cli(*books, "--out", tmp_path / "whole", "--tokenizer", tmp_path / "o", "--piece-chars", 0, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "warning: validation takes the whole of" in r.stderr and r.stderr.count("\n") == 1
    m = data.load_manifest(tmp_path / "whole")
    assert m["documents"] == {"train": 1, "val": 1} and len(m["warnings"]) == 1
    assert m["tokens_beyond_row"] > 0.99 * (m["tokens"]["train"] + m["tokens"]["val"]) and "99." in r.stdout


def test_split_blank_counts_dropped_paragraphs(tmp_path, gpt2):
    book = tmp_path / "b.txt"
    book.write_text("CHAPTER I\n\nIt was a dark night.\nRain fell.\n\nCHAPTER II\n\nMorning came.\n\n" * 3
                    + "\n".join(f"Line {i}." for i in range(30)))
    m = data.prepare(str(book), tmp_path / "o", gpt2, split="blank", progress=False)
    assert m["read"]["duplicates"] == 8 and "8 exact duplicate" in m["summary"]  # 4 paragraphs, 3 times each
    assert sum(m["documents"].values()) == 5
    m = data.prepare(str(book), tmp_path / "p", gpt2, piece_chars=40, progress=False)  # pieces: breaks kept
    pieces = list(data.read_txt(book, piece_chars=40))
    assert "".join(pieces) == book.read_text() and sorted(texts_of(tmp_path / "p", gpt2)) == sorted(set(pieces))
    dups = len(pieces) - len(set(pieces))
    assert dups > 0 and m["read"]["duplicates"] == dups and f"{dups} exact duplicate" in m["summary"]
    assert m["read"]["cut"] == 1 and "\n\n" in "".join(texts_of(tmp_path / "p", gpt2))


def test_seed_decides_the_order_only(tmp_path, gpt2):
    sh = need_asset(SHAKESPEARE)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        data.prepare(str(sh), tmp_path / name, gpt2, seed=seed, split="blank", **SMALL)
    files = sorted(p.name for p in (tmp_path / "a").glob("*.parquet"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    a, c = texts_of(tmp_path / "a", gpt2), texts_of(tmp_path / "c", gpt2)
    assert a != c and sorted(a) == sorted(c)


def test_crash_then_resume_skips_finished_windows_and_matches(tmp_path, gpt2):
    sh = need_asset(SHAKESPEARE)
    speeches = lambda: data.read_txt(sh, "blank")
    data.write_shards(speeches(), tmp_path / "clean", gpt2, source="s", **SMALL)

    def dies(texts, n):
        for i, t in enumerate(texts):
            if i == n:
                raise RuntimeError("simulated crash")
            yield t

    with pytest.raises(RuntimeError):
        data.write_shards(dies(speeches(), 5000), tmp_path / "crash", gpt2, source="s", **SMALL)
    prog = json.loads((tmp_path / "crash" / "_progress.json").read_text())
    assert prog["windows_done"] == 2 and not (tmp_path / "crash" / "manifest.json").exists()
    assert not [p for p in (tmp_path / "crash").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(FileNotFoundError, match="unfinished"):
        DataLoader(tmp_path / "crash", 2, 16)
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "crash").glob("shard_*.parquet")}
    data.write_shards(speeches(), tmp_path / "crash", gpt2, source="s", **SMALL)
    assert all((tmp_path / "crash" / f).stat().st_mtime_ns == t for f, t in done.items())  # not rewritten
    clean = sorted(p.name for p in (tmp_path / "clean").iterdir())
    assert sorted(p.name for p in (tmp_path / "crash").iterdir()) == clean
    for f in clean:
        if f.endswith(".parquet"):
            assert (tmp_path / "crash" / f).read_bytes() == (tmp_path / "clean" / f).read_bytes()
    # a crash after the last window but before the manifest: the re-run writes the validation shard and finishes
    cm = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    (tmp_path / "crash" / "manifest.json").unlink()
    (tmp_path / "crash" / cm["val_shard"]).rename(tmp_path / "crash" / "_val.parquet")  # the state at that moment
    (tmp_path / "crash" / "_progress.json").write_text(json.dumps(prog | {"windows_done": 99, "exhausted": True,
        "shards": cm["shards"][:-1], "val": {k: v for k, v in cm["shards"][-1].items() if k != "file"} | {"file": "_val.parquet"}}))
    m = data.write_shards(speeches(), tmp_path / "crash", gpt2, source="s", **SMALL)
    assert m["val_shard"] == cm["val_shard"] and sorted(p.name for p in (tmp_path / "crash").iterdir()) == clean
    assert (tmp_path / "crash" / m["val_shard"]).read_bytes() == (tmp_path / "clean" / cm["val_shard"]).read_bytes()


def test_bad_input_one_line_errors_nothing_written(tmp_path, gpt2):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "nocol.parquet")
    (tmp_path / "one.jsonl").write_text('{"text": "only one"}\n')
    (tmp_path / "notjson.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (tmp_path / "short.txt").write_text("one piece only\n")
    cases = {"empty.txt": (ValueError, "holds no documents"),
             "nofield.jsonl": (ValueError, "has no 'text' field (it has: body): pass --text-field"),
             "nocol.parquet": (ValueError, "has no 'text' field (it has: content)"),
             "one.jsonl": (ValueError, "only 1 document"), "short.txt": (ValueError, "only 1 document"),
             "notjson.jsonl": (ValueError, "line 2 is not JSON"), "missing.txt": (FileNotFoundError, "no such file or folder"),
             "x.csv": (ValueError, "unsupported")}
    (tmp_path / "x.csv").write_text("a,b\n")
    for name, (kind, msg) in cases.items():
        with pytest.raises(kind, match=msg.replace("(", r"\(").replace(")", r"\)")):
            data.prepare(str(tmp_path / name), tmp_path / ("out_" + name), gpt2, progress=False)
        assert not (tmp_path / ("out_" + name)).exists()
    with pytest.raises(ValueError, match="bpe:N needs a vocabulary size"):
        data.prepare(str(tmp_path / "empty.txt"), tmp_path / "o", "bpe:many", progress=False)
    # the same through the CLI: one line on stderr, exit status 1
    r = cli(tmp_path / "nofield.jsonl", "--out", tmp_path / "o")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "--text-field" in r.stderr
    r = cli(tmp_path / "short.txt", tmp_path / "nowhere.txt", "--out", tmp_path / "o")  # every path checked first
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "nowhere.txt: no such file" in r.stderr
    assert not (tmp_path / "o").exists()


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, gpt2):
    good = "\n\n".join(f"paragraph {i} caf\u00e9" for i in range(30))
    raw = good.encode() + b"\n\nbroken \xff\xfe here and \xc3 there\n\nlast"
    (tmp_path / "t.txt").write_bytes(raw)
    m = data.prepare(str(tmp_path / "t.txt"), tmp_path / "o", gpt2, split="blank", progress=False)
    assert m["read"]["replaced"] == 3 and m["documents"]["train"] + m["documents"]["val"] == 32
    assert "broken \ufffd\ufffd here and \ufffd there" in texts_of(tmp_path / "o", gpt2)
    assert "replaced 3 bad character(s)" in m["summary"]


def test_other_tokenizer_or_settings_refused(tmp_path, gpt2):
    sh = need_asset(SHAKESPEARE)
    data.prepare(str(sh), tmp_path / "o", gpt2, max_docs=600, split="blank", **SMALL)
    bpe = train_tokenizer(data.read_txt(sh, "blank"), 300)
    with pytest.raises(ValueError, match="prepared with tokenizer gpt2"):
        data.prepare(str(sh), tmp_path / "o", bpe, max_docs=600, split="blank", **SMALL)
    with pytest.raises(ValueError, match="other settings .*max_docs 600 there, 700 now"):
        data.prepare(str(sh), tmp_path / "o", gpt2, max_docs=700, split="blank", **SMALL)
    with pytest.raises(ValueError, match="other settings .*split 'blank' there, 'line' now"):
        data.prepare(str(sh), tmp_path / "o", gpt2, max_docs=600, split="line", **SMALL)
    with pytest.raises(ValueError, match="tokenized with gpt2, not bpe300"):
        DataLoader(tmp_path / "o", 2, 16, tokenizer=bpe)
    r = cli(sh, "--out", tmp_path / "o", "--max-docs", 600, "--shard-docs", 512, "--val-docs", 128, "--split", "blank")
    assert r.returncode == 1 and "other settings" in r.stderr  # the CLI's window is 16 shards, not 2048 docs
    # the same command again: nothing to do
    m = data.prepare(str(sh), tmp_path / "o", gpt2, max_docs=600, split="blank", **SMALL)
    assert m["documents"]["train"] == 540 and "stopped at --max-docs 600" in m["summary"]
    (tmp_path / "foreign").mkdir()
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "foreign" / "shard_00000.parquet")
    with pytest.raises(ValueError, match="without a manifest"):
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
    sh = need_asset(SHAKESPEARE)
    m = data.prepare(str(sh), tmp_path / "d", gpt2, max_docs=1000, split="blank", **SMALL)
    assert m["documents"]["train"] + m["documents"]["val"] == 1000
    m = data.prepare(str(sh), tmp_path / "t", gpt2, max_tokens=20_000, **SMALL)
    total = m["tokens"]["train"] + m["tokens"]["val"]
    assert 20_000 <= total < 20_000 + max(len(d) for d in docs_of(tmp_path / "t"))
    assert "stopped at --max-tokens 20,000" in m["summary"]


# --- the hub code path (huggingface_hub), against a local server that answers what that library asks ---

REPO_ID, COMMIT = "HuggingFaceFW/fineweb-edu", "0123456789abcdef0123456789abcdef01234567"


class FakeHub(BaseHTTPRequestHandler):
    "Repository info, the paged tree listing, and resolve with HEAD/GET/Range: the endpoints huggingface_hub uses."
    files: dict = {}
    log: list = []
    drop_first: set = set()  # file paths whose first full download is cut half-way
    fail_first: set = set()  # request paths answered 503 once (the library retries)

    def log_message(self, *a):
        pass

    def _json(self, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        url = urlsplit(self.path)
        self.log.append(("HEAD" if head else "GET", url.path, self.headers.get("Range")))
        if url.path in self.fail_first:
            self.fail_first.discard(url.path)
            self.send_error(503)
            return
        api, resolve = f"/api/datasets/{REPO_ID}", f"/datasets/{REPO_ID}/resolve/main/"
        if url.path in ("/", api, api + "/revision/main"):
            return self._json({"id": REPO_ID, "sha": COMMIT})
        if url.path.startswith(api + "/tree/main/"):
            folder = unquote(url.path[len(api + "/tree/main/"):])
            names = sorted(n for n in self.files if n.rsplit("/", 1)[0] == folder)
            if not names:
                self.send_error(404)
                return
            page = 1 if "page=2" in url.query else 0  # two pages, to exercise the Link header
            entries = [{"type": "file", "path": n, "size": len(self.files[n]), "oid": "f" * 40} for n in names[page::2]]
            entries += [{"type": "directory", "path": folder + "/x", "oid": "d" * 40}] if page else []
            link = [("Link", f'<http://{self.headers["Host"]}{url.path}?page=2>; rel="next"')] if page == 0 else []
            return self._json(entries, link)
        path = url.path[len(resolve):]
        if not url.path.startswith(resolve) or path not in self.files:
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
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{len(blob):x}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if head:
            return
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
    texts = list(data.read_txt(need_asset(SHAKESPEARE)))[:150]  # 150 real documents, from the committed asset
    files = {}
    for i, chunk in enumerate((texts[:80], texts[80:])):
        p = tmp_path / f"{i}.parquet"
        # incompressible padding makes the second file (~25 MB) span more than one of huggingface_hub's 10 MB
        # download chunks, so a download cut half-way has a finished chunk to resume after
        pad = [os.urandom(350_000 if i else 1) for _ in chunk]
        pq.write_table(pa.table({"text": chunk, "pad": pad}), p, row_group_size=10, compression="none")
        files[f"sample/10BT/{i:03d}_00000.parquet"] = p.read_bytes()
    FakeHub.files, FakeHub.log, FakeHub.drop_first, FakeHub.fail_first = files, [], {"sample/10BT/001_00000.parquet"}, set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.chdir(tmp_path)  # downloads go to ./data/raw
    yield texts, files
    server.shutdown()


def test_fineweb_download_resumes_after_a_dropped_connection(hub, gpt2, tmp_path):
    texts, files = hub
    FakeHub.fail_first = {f"/api/datasets/{REPO_ID}/tree/main/sample%2F10BT"}  # a 503 first: retried by the library
    m = data.prepare("fineweb-edu", tmp_path / "fw", gpt2, config="sample-10BT", progress=False)
    assert sorted(texts_of(tmp_path / "fw", gpt2)) == sorted(t.strip() for t in texts)
    assert m["source"] == "HuggingFaceFW/fineweb-edu:sample-10BT"
    listings = [p for _, p, _ in FakeHub.log if "/tree/" in p]
    assert len(listings) == 3  # the 503, then the two pages
    raw = tmp_path / "data" / "raw" / "fineweb-edu"
    for path, blob in files.items():
        assert (raw / path).read_bytes() == blob
    assert not [p for p in raw.rglob("*") if p.name.endswith(".incomplete")]
    resumed = [r for _, p, r in FakeHub.log if p.endswith("001_00000.parquet") and r]
    assert len(resumed) == 1 and int(resumed[0][6:-1]) > 0  # the second request continued after what it had


def test_fineweb_stream_reads_only_row_groups(hub, gpt2, tmp_path):
    texts, files = hub
    m = data.prepare("fineweb-edu", tmp_path / "fw", gpt2, max_docs=30, progress=False)
    assert sorted(texts_of(tmp_path / "fw", gpt2)) == sorted(t.strip() for t in texts[:30])
    assert m["params"]["max_docs"] == 30
    gets = [(p, r) for method, p, r in FakeHub.log if "/resolve/" in p and method == "GET"]
    assert gets and all(r is not None for _, r in gets)  # only Range requests: nothing downloaded whole
    assert sum(int(r.split("-")[1]) - int(r[6:].split("-")[0]) + 1 for _, r in gets) < len(files["sample/10BT/000_00000.parquet"]) + (1 << 20)
    assert all("001_00000" not in p for _, p, _ in FakeHub.log)  # the second file was never touched
    assert not (tmp_path / "data" / "raw").exists()


def test_fineweb_missing_config_is_one_line(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="check --config"):
        data.prepare("fineweb-edu", tmp_path / "o", "gpt2", config="sample-1BT", progress=False)
    with pytest.raises(ValueError, match="is not a FineWeb-Edu config"):
        data.prepare("fineweb-edu", tmp_path / "o", "gpt2", config="tiny", progress=False)
    assert not (tmp_path / "o").exists()


def test_fineweb_offline_is_one_line(tmp_path):
    # a BPE trained on the corpus: the first thing that needs the network is the hub (not GPT-2's files)
    r = cli("fineweb-edu", "--max-tokens", 1000, "--out", tmp_path / "o", "--tokenizer", "bpe:300", env={"HF_ENDPOINT": DEAD})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("cannot reach the Hugging Face hub at http://127.0.0.1:9") and "vibenanochat.data PATH" in r.stderr
    assert not (tmp_path / "o").exists()


AUTO_OFFLINE = """
import runpy, sys
from pathlib import Path
import vibenanochat.assets as assets
hidden = Path(sys.argv.pop(1))
assets.repo_data_dir = lambda: hidden  # this checkout's data/ holds GPT-2's files: look elsewhere
runpy.run_module("vibenanochat.data", run_name="__main__")
"""


def test_auto_offline_is_tiny_shakespeare_with_a_trained_bpe(tmp_path):
    "Offline, no GPT-2 anywhere: `auto` picks Tiny Shakespeare, `--tokenizer auto` trains a BPE; both say why."
    only = tmp_path / "only_text" / "text"
    only.mkdir(parents=True)
    os.symlink(need_asset(SHAKESPEARE), only / "tiny_shakespeare_input.txt")
    env = dict(os.environ, **OFFLINE, HF_ENDPOINT=DEAD, VNC_DATA_DIR=str(only.parent), VNC_CACHE_DIR=str(tmp_path / "cache"),
               TIKTOKEN_CACHE_DIR=str(tmp_path / "empty"))
    args = [tmp_path / "norepo", "auto", "--out", tmp_path / "o", "--tokenizer", "auto", "--bpe-vocab", 600,
            "--max-tokens", 30_000, "--quiet"]
    r = subprocess.run([sys.executable, "-c", AUTO_OFFLINE, *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    source, tokenizer, summary = r.stdout.strip().splitlines()[:2] + r.stdout.strip().splitlines()[-1:]
    assert source.startswith("data source: the Hugging Face hub at http://127.0.0.1:9 is unreachable: the offline "
                             "corpus, Tiny Shakespeare")
    assert tokenizer.startswith("tokenizer: a 600-token BPE trained on the corpus (auto: GPT-2 is unavailable; asset "
                                "tokenizers/gpt2 is not here") and "openaipublic" in tokenizer
    assert "stopped at --max-tokens 30,000" in summary
    m = data.load_manifest(tmp_path / "o")
    enc = get_tokenizer(tmp_path / "o")
    assert m["tokenizer"] == "bpe600" and enc.n_vocab == 600 and m["tokens"]["train"] + m["tokens"]["val"] >= 30_000
    x, y = next(DataLoader(tmp_path / "o", 2, 32, prefetch=0))
    assert int(x[0, 0]) == 599 and int(x.max()) < 600
    assert enc.decode(x[0, 1:].tolist()) in need_asset(SHAKESPEARE).read_text(encoding="utf-8")


# --- check_shards: the start-up check of a prepared folder ---

def _copy(folder: Path, to: Path) -> Path:
    import shutil
    shutil.copytree(folder, to)
    return to


def _one_line_error(folder: Path, vocab: int) -> str:
    with pytest.raises(ValueError) as e:
        data.check_shards(folder, vocab)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_check_shards_passes_a_good_folder_and_finds_the_true_max(shakespeare_shards):
    m = data.load_manifest(shakespeare_shards)
    top = max(int(d.max()) for s in m["shards"] for d in data.read_shard(shakespeare_shards / s["file"]))
    assert top == 2047  # the BPE's BOS, which starts every document
    data.check_shards(shakespeare_shards, 2048)  # every shard read, nothing raised
    msg = _one_line_error(shakespeare_shards, top)  # one id too many: the naive maximum decides
    assert f"holds token id {top} but the model's vocabulary has {top}" in msg


def test_check_shards_refuses_a_truncated_val_shard(shakespeare_shards, tmp_path):
    d = _copy(shakespeare_shards, tmp_path / "d")
    val = d / data.load_manifest(d)["val_shard"]
    val.write_bytes(val.read_bytes()[:-100])  # a copy cut short
    msg = _one_line_error(d, 2048)
    assert msg.startswith(f"shard {val} is damaged") and msg.endswith(
        f"prepare it again beside it, with its tokenizer: python -m vibenanochat.data {data.load_manifest(d)['source']} "
        f"--out {d}-new --tokenizer {d / 'tokenizer.json'}")


def test_check_shards_refuses_a_shard_with_documents_missing(shakespeare_shards, tmp_path):
    "A readable shard that holds less than the manifest says (e.g. replaced by a shorter one)."
    d = _copy(shakespeare_shards, tmp_path / "d")
    m = data.load_manifest(d)
    first = d / m["train_shards"][0]
    docs = data.read_shard(first)
    data.write_shard(first, docs[:-1])
    msg = _one_line_error(d, 2048)
    assert (f"shard {first} holds {len(docs) - 1:,} documents and {sum(map(len, docs[:-1])):,} tokens, but the manifest "
            f"says {len(docs):,} and {m['shards'][0]['tokens']:,}: it is incomplete") in msg


def test_check_shards_refuses_a_corrupt_shard(shakespeare_shards, tmp_path):
    d = _copy(shakespeare_shards, tmp_path / "d")
    shard = d / data.load_manifest(d)["train_shards"][0]
    col = pq.ParquetFile(shard).metadata.row_group(0).column(0)
    b = bytearray(shard.read_bytes())
    b[col.data_page_offset + col.total_compressed_size // 2] ^= 0x55  # one byte inside the first data page
    shard.write_bytes(bytes(b))
    msg = _one_line_error(d, 2048)
    assert msg.startswith(f"shard {shard} is damaged (") and "checksum" in msg


def test_check_shards_refuses_a_folder_of_a_bigger_vocabulary(tmp_path, gpt2, shakespeare_shards):
    "Shards tokenized by GPT-2 (50,257 ids) given to a model of the 2,048-token BPE: the largest id is named."
    data.prepare(str(need_asset(SHAKESPEARE)), tmp_path / "g", gpt2, max_docs=200, **SMALL)
    m = data.load_manifest(tmp_path / "g")
    tops = [max(int(x.max()) for x in data.read_shard(tmp_path / "g" / s["file"])) for s in m["shards"]]
    first_bad = next(i for i, t in enumerate(tops) if t >= 2048)
    msg = _one_line_error(tmp_path / "g", 2048)
    assert msg == (f"shard {tmp_path / 'g' / m['shards'][first_bad]['file']} holds token id {tops[first_bad]} but the "
                   "model's vocabulary has 2048: the folder was tokenized by another tokenizer; re-tokenize or pass the "
                   "matching --tokenizer")
    data.check_shards(tmp_path / "g", gpt2.n_vocab)
