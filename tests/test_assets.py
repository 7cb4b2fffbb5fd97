"""The committed data/ folder and the asset resolver, for real: every committed file against data/README.md and
the registry, the mini bundle against its documented rule, the search order on temporary folders, checked
downloads from a local HTTP server, and the one-line error when a file is neither here nor downloadable."""
import csv
import hashlib
import io
import os
import random
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from _local_server import Server, sandbox
from conftest import REPO, need_asset

from vibenanochat import assets

DATA = REPO / "data"
MINI_ROWS, MINI_SEED = 100, 1337   # the rule data/README.md documents for the mini bundle


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def readme_table() -> dict[str, dict]:
    "The 'Committed files' table of data/README.md: path → {what, source, licence, bytes, sha256}."
    text = (DATA / "README.md").read_text(encoding="utf-8")
    section = text.split("## Committed files", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| `"): continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 6, line
        path, what, source, licence, nbytes, digest = cells
        rows[path.strip("`")] = {"what": what, "source": source, "licence": licence, "bytes": int(nbytes), "sha256": digest.strip("`")}
    return rows


def tracked_data_files() -> list[str]:
    "Files git tracks under data/ (README.md aside), as paths relative to data/."
    out = subprocess.run(["git", "ls-files", "data"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted(p[len("data/"):] for p in out.splitlines() if p != "data/README.md")


# ------------------------------------------------------------------ the committed files

def test_every_committed_file_matches_the_readme_and_the_registry():
    table = readme_table()
    assert sorted(table) == tracked_data_files()        # the table lists exactly what git tracks, nothing more
    for name, row in table.items():
        p = DATA / name
        assert p.stat().st_size == row["bytes"], name
        assert sha256(p) == row["sha256"], name
        assert row["source"].startswith("https://") and row["licence"], name
        if name in assets.REGISTRY:                         # downloadable too: the same bytes, the same source
            assert assets.REGISTRY[name].sha256 == row["sha256"] and assets.REGISTRY[name].url == row["source"], name
    for name in ("tokenizers/gpt2/encoder.json", "tokenizers/gpt2/vocab.bpe", "text/tiny_shakespeare_input.txt"):
        assert name in table and name in assets.REGISTRY
    total = sum(r["bytes"] for r in table.values())
    assert total < 10_000_000, f"committed data is {total:,} bytes: keep it under about 10 MB"
    assert f"## Committed files ({len(table)} files, {total:,} bytes)" in (DATA / "README.md").read_text(encoding="utf-8")


def test_registered_files_are_pinned_unless_the_readme_says_why():
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    unpinned = sorted(k for k, a in assets.REGISTRY.items() if a.sha256 is None)
    assert unpinned == ["eval_bundle", "gauntlet/eval_data/world_knowledge/mmlu.jsonl",
                        "text/public_domain/anna_karenina_pg1399.txt", "text/public_domain/war_and_peace_pg2600.txt"]
    for name, a in assets.REGISTRY.items():
        assert a.url.startswith("https://") and a.licence, name
        assert a.sha256 is None or (len(a.sha256) == 64 and int(a.sha256, 16) >= 0), name
    for where in ("eval_bundle.zip", "pg2600.txt", "pg1399.txt", "mosaicml/llm-foundry/8c8dd48f72168c5d51e2f7b151595892a8fba43d"):
        assert where in readme, where     # each download and why it is unchecked are documented


def test_mini_bundle_is_complete_and_readable():
    mini = assets.asset("eval_bundle_mini")
    assert mini.resolve() == DATA / "eval_bundle_mini"
    uris = set()
    for suite in ("core", "gauntlet"):
        uris |= {e["dataset_uri"] for e in yaml.safe_load((mini / f"{suite}.yaml").read_text())["icl_tasks"]}
    present = {p.relative_to(mini / "eval_data").as_posix() for p in (mini / "eval_data").rglob("*.jsonl")}
    assert present == uris - {"reading_comprehension/coqa.jsonl"}     # every listed task but the one absent upstream
    for uri in present:
        lines = (mini / "eval_data" / uri).read_bytes().splitlines(keepends=True)
        assert 11 < len(lines) <= MINI_ROWS and all(l.endswith(b"\n") and l.strip() for l in lines), uri
    gauntlet = [e["dataset_uri"] for e in yaml.safe_load((mini / "gauntlet.yaml").read_text())["icl_tasks"]]
    core = {e["dataset_uri"] for e in yaml.safe_load((mini / "core.yaml").read_text())["icl_tasks"]}
    # each gauntlet file the CORE zip lacks is registered for download
    assert {k[len("gauntlet/eval_data/"):] for k in assets.REGISTRY if k.startswith("gauntlet/")} == set(gauntlet) - core


def test_mini_bundle_is_the_documented_subsample_of_the_full_bundle():
    full = need_asset("eval_bundle")
    mini = DATA / "eval_bundle_mini"
    status = {r["dataset_uri"]: r["file_status"] for r in csv.DictReader((mini / "gauntlet_meta.csv").open(encoding="utf-8"))}
    checked = 0
    for p in sorted((mini / "eval_data").rglob("*.jsonl")):
        uri = p.relative_to(mini / "eval_data").as_posix()
        src = full / "eval_data" / uri
        if not src.exists() or status.get(uri) == "RECONSTRUCTED": continue   # rebuilt files differ from upstream's bytes
        lines = src.read_bytes().splitlines(keepends=True)
        keep = list(range(len(lines)))
        random.Random(MINI_SEED).shuffle(keep)
        assert p.read_bytes() == b"".join(lines[i] for i in sorted(keep[:MINI_ROWS])), uri
        checked += 1
    assert checked >= 18    # the CORE zip alone holds 18 verbatim files of the mini bundle
    for name in ("core.yaml", "eval_meta_data.csv", "openai-community-gpt2.csv"):
        assert (mini / name).read_bytes() == (full / name).read_bytes(), name


# ------------------------------------------------------------------ the search order, on temporary folders

NAME = "text/tiny_shakespeare_input.txt"


def put(root: Path, name: str, text: str) -> Path:
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_search_order_explicit_then_data_dirs_then_cwd_data_then_repo(tmp_path, monkeypatch):
    a, b, cwd = (put(tmp_path / d, NAME, d) for d in ("a", "b", "cwd/data"))
    monkeypatch.setenv("VNC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("VNC_DATA_DIR", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert assets.asset(NAME) == a                                   # the first VNC_DATA_DIR folder
    assert assets.asset(NAME, path=b) == b                           # an explicit path beats everything
    monkeypatch.setenv("VNC_DATA_DIR", os.pathsep.join([str(tmp_path / "empty"), str(tmp_path / "b")]))
    assert assets.asset(NAME) == b                                   # a folder without it is passed over
    monkeypatch.delenv("VNC_DATA_DIR")
    assert assets.asset(NAME).resolve() == cwd.resolve()             # ./data
    monkeypatch.chdir(tmp_path)
    assert assets.asset(NAME) == DATA / NAME                         # the repo's committed copy
    assert assets.asset(NAME).read_bytes()[:14] == b"First Citizen:"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        assets.asset(NAME, path=tmp_path / "nowhere")


def test_an_incomplete_folder_is_passed_over(tmp_path, monkeypatch):
    put(tmp_path / "mine", "tokenizers/gpt2/encoder.json", "{}")     # vocab.bpe missing: not a tokenizer folder
    (tmp_path / "mine" / "eval_bundle" / "eval_data").mkdir(parents=True)   # no core.yaml: not a bundle
    monkeypatch.setenv("VNC_DATA_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("VNC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert assets.asset("tokenizers/gpt2") == DATA / "tokenizers" / "gpt2"
    assert assets.find_local("eval_bundle") is None
    with pytest.raises(FileNotFoundError) as e:
        assets.asset("eval_bundle", download=False)
    msg = str(e.value)
    assert "\n" not in msg and "eval_bundle.zip" in msg and "data/eval_bundle" in msg


# ------------------------------------------------------------------ downloads from a local server

def test_checked_download_then_found_in_the_cache(tmp_path, monkeypatch):
    box = sandbox(tmp_path, monkeypatch)
    served = put(box / "srv", "notes.txt", "the real bytes\n")
    good = sha256(served)
    with Server(box / "srv") as s:
        assets.REGISTRY["text/notes.txt"] = assets.Asset(f"{s.url}/notes.txt", good, "test")
        assets.REGISTRY["text/tampered.txt"] = assets.Asset(f"{s.url}/notes.txt", "0" * 64, "test")
        p = assets.asset("text/notes.txt")
        assert p == box / "cache" / "text" / "notes.txt" and p.read_text() == "the real bytes\n"
        with pytest.raises(FileNotFoundError) as e:                 # a hash mismatch is refused, and nothing is kept
            assets.asset("text/tampered.txt")
    msg = str(e.value)
    assert "\n" not in msg and "text/tampered.txt" in msg and "notes.txt" in msg and "data/text/tampered.txt" in msg
    assert not (box / "cache" / "text" / "tampered.txt").exists()
    assert assets.asset("text/notes.txt") == p                      # server gone: the cached copy is used


def test_zip_asset_is_unpacked_into_its_folder(tmp_path, monkeypatch):
    box = sandbox(tmp_path, monkeypatch)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:                 # nested under a top folder, like nanochat's zip
        z.writestr("eval_bundle/core.yaml", "icl_tasks: []\n")
        z.writestr("eval_bundle/eval_data/t/a.jsonl", '{"query": "q", "choices": ["a"], "gold": 0}\n')
    (box / "srv").mkdir()
    (box / "srv" / "b.zip").write_bytes(buf.getvalue())
    with Server(box / "srv") as s:
        assets.REGISTRY["eval_bundle"] = assets.Asset(f"{s.url}/b.zip", hashlib.sha256(buf.getvalue()).hexdigest(),
                                                      "test", unzip=True, marker="core.yaml")
        p = assets.asset("eval_bundle")
    assert p == box / "cache" / "eval_bundle"
    assert (p / "core.yaml").exists() and (p / "eval_data" / "t" / "a.jsonl").exists()
    assert assets.asset("eval_bundle") == p


def test_offline_gives_one_line_naming_asset_url_and_place(tmp_path, monkeypatch):
    box = sandbox(tmp_path, monkeypatch)
    assets.REGISTRY["text/far.txt"] = assets.Asset("http://127.0.0.1:9/far.txt", "0" * 64, "test")   # nothing listens on port 9
    for kw in ({}, {"download": False}):
        with pytest.raises(FileNotFoundError) as e:
            assets.asset("text/far.txt", **kw)
        msg = str(e.value)
        assert "\n" not in msg and "text/far.txt" in msg and "http://127.0.0.1:9/far.txt" in msg and "data/text/far.txt" in msg, msg
    with pytest.raises(FileNotFoundError) as e:                       # not registered at all
        assets.asset("text/unknown.txt")
    assert "\n" not in str(e.value) and "data/text/unknown.txt" in str(e.value)
    assert not (box / "cache").exists() or not [p for p in (box / "cache").rglob("*") if p.is_file()]   # nothing half-written
