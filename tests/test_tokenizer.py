"""Tokenizer: GPT-2 from the asset, tiktoken's cache and offline; trained BPE; BOS handling; token_bytes."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import base64

import pyarrow.parquet as pq
import pytest

from conftest import need_asset, small_bpe
from vibenanochat.assets import find_local
from vibenanochat.tokenizer import (bos_id, encode_doc, encode_docs, get_tokenizer, gpt2_ranks_from_files,
                                    save_tokenizer, token_bytes, tokenizer_hash, train_tokenizer)

CORPORA = ("text/tiny_shakespeare_input.txt", "text/fineweb_edu_sample/fineweb_edu_sample150.jsonl",
           "text/fineweb_edu_sample/fineweb_edu_sample150.parquet", "text/public_domain/war_and_peace_pg2600.txt",
           "text/public_domain/anna_karenina_pg1399.txt")


def corpus_texts() -> dict[str, str]:
    "Each corpus on this machine as one string (files as they are, parquet rows joined); Tiny Shakespeare always."
    need_asset(CORPORA[0])
    out = {}
    for p in (find_local(n) for n in CORPORA):
        if p is None: continue
        out[p.name] = ("\n\n".join(pq.read_table(p, columns=["text"]).column("text").to_pylist()) if p.suffix == ".parquet"
                       else p.read_text(encoding="utf-8"))
    return out


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode_ordinary("Hello world") == [15496, 995]
    assert gpt2.n_vocab == 50257 and bos_id(gpt2) == 50256 and gpt2.name == "gpt2"


def test_roundtrip_every_corpus(gpt2):
    texts = corpus_texts()
    assert "tiny_shakespeare_input.txt" in texts
    for name, text in texts.items():
        assert gpt2.decode(gpt2.encode_ordinary(text)) == text, name


def test_three_local_formats_are_one_tokenizer(gpt2, tmp_path):
    d = need_asset("tokenizers/gpt2")
    h = tokenizer_hash(gpt2)
    assert tokenizer_hash(get_tokenizer(d / "encoder.json")) == h
    only_tt = tmp_path / "tt"
    only_tt.mkdir()
    r50k = find_local("tokenizers/gpt2/r50k_base.tiktoken")  # tiktoken's own file, when it is at hand
    if r50k is not None:
        shutil.copy(r50k, only_tt)
    else:  # else GPT-2's table written in tiktoken's spelling: the two readers must still agree
        ranks = gpt2_ranks_from_files(d / "encoder.json", d / "vocab.bpe")
        (only_tt / "r50k_base.tiktoken").write_text("".join(f"{base64.b64encode(b).decode()} {r}\n" for b, r in ranks.items()))
    assert tokenizer_hash(get_tokenizer(only_tt / "r50k_base.tiktoken")) == h
    assert tokenizer_hash(get_tokenizer(only_tt)) == h
    assert tokenizer_hash(get_tokenizer(save_tokenizer(gpt2, tmp_path / "g.json"))) == h


SCENARIOS = """
import os, sys
from pathlib import Path
import vibenanochat.assets as assets
from vibenanochat.tokenizer import get_tokenizer, tokenizer_hash
data_dir, tmp = sys.argv[1], sys.argv[2]
assets.repo_data_dir = lambda: Path(tmp) / "no_repo_data"  # this checkout's data/ may hold GPT-2: look elsewhere
os.environ["VNC_CACHE_DIR"] = tmp + "/no_download_cache"
def attempt(**env):
    for k in ("VNC_DATA_DIR", "TIKTOKEN_CACHE_DIR"): os.environ.pop(k, None)
    os.environ.update(env)
    try:
        e = get_tokenizer("gpt2")
        return f"ok {e.encode_ordinary('Hello world')} {tokenizer_hash(e)}"
    except FileNotFoundError as x:
        return f"error {x}"
for env in [dict(VNC_DATA_DIR=tmp + "/nowhere" + os.pathsep + data_dir, TIKTOKEN_CACHE_DIR=tmp + "/empty"),  # the asset
            dict(VNC_DATA_DIR=tmp + "/nowhere", TIKTOKEN_CACHE_DIR=tmp + "/empty"),   # offline, nothing local
            dict(TIKTOKEN_CACHE_DIR=tmp + "/cache")]:                                 # tiktoken's own cache, offline
    print(attempt(**env))
"""


def test_gpt2_from_asset_tiktoken_cache_and_offline(tmp_path):
    d = need_asset("tokenizers/gpt2")
    cache = tmp_path / "cache"  # tiktoken names cached files by the sha1 of their URL
    cache.mkdir()
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for f in ("vocab.bpe", "encoder.json"):
        shutil.copy(d / f, cache / hashlib.sha1((base + f).encode()).hexdigest())
    env = {k: v for k, v in os.environ.items() if k not in ("VNC_DATA_DIR", "TIKTOKEN_CACHE_DIR")}
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[k] = "http://127.0.0.1:9"  # an unreachable proxy: the network fails fast and surely, online or not
    r = subprocess.run([sys.executable, "-c", SCENARIOS, str(d.parent.parent), str(tmp_path)], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    from_asset, offline, from_cache = r.stdout.strip().split("\n")
    assert from_asset.startswith("ok [15496, 995]") and from_cache.startswith("ok [15496, 995]")
    assert from_asset.split()[-1] == from_cache.split()[-1]  # our local loader builds exactly tiktoken's GPT-2
    # one line that names the asset, its URL and where to put it
    assert offline.startswith("error asset tokenizers/gpt2 is not here and its download from")
    assert "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/" in offline and "data/tokenizers/gpt2" in offline


def test_bad_tokenizer_files(tmp_path):
    for name, content in [("t.json", '{"a": 1}'), ("x.json", "not json"), ("b.tiktoken", "@@@ 1\n")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=name):
            get_tokenizer(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="tokenizer .*missing.json' not found: pass 'gpt2'"):
        get_tokenizer(tmp_path / "missing.json")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        get_tokenizer(tmp_path / "emptydir")
    # a saved file whose content was edited no longer matches its hash
    bpe = train_tokenizer(["abc abd abe " * 50], 260)
    p = save_tokenizer(bpe, tmp_path / "bpe.json")
    obj = json.loads(p.read_text())
    obj["ranks"][0], obj["ranks"][1] = obj["ranks"][1], obj["ranks"][0]
    p.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="corrupt"):
        get_tokenizer(p)


def broken_copies(obj: dict) -> dict[str, tuple[str | bytes, str]]:
    "name -> (file content, what the one-line error must say) for copies of a good tokenizer.json broken one way each."
    ranks, merges = obj["ranks"], obj["ranks"][256:]
    j = lambda **kw: json.dumps({**obj, **kw})
    return {
        "missing_key": (json.dumps({k: v for k, v in obj.items() if k != "pat_str"}), "lacks the key(s) pat_str"),
        "wrong_type": (j(ranks={"0": ranks[0]}), "ranks is dict, not list"),
        "regex_error": (j(pat_str=r"(\p{L}+"), "split pattern that does not compile"),
        "engine_error": (j(pat_str=r"\p{Letter+"), "split pattern tiktoken cannot use"),  # `regex` takes it, tiktoken not
        "empty_pattern": (j(pat_str=""), "matches the empty string"),
        "not_json": ("ranks: [1, 2, 3]\n", "is not valid JSON"),
        "truncated": (json.dumps(obj)[: len(json.dumps(obj)) // 2], "is not valid JSON"),
        "binary": (b"\x80\x81\xfe\xff" * 10, "is not UTF-8 text"),
        "not_base64": (j(ranks=ranks[:-1] + ["@@not base64@@"]), "is not a base64 string"),
        "repeated": (j(ranks=ranks + [ranks[300]]), "repeating the token of rank 300"),
        "missing_byte": (j(ranks=ranks[:65] + ranks[66:]), "lacks 1 of the 256 single bytes"),
        "out_of_order": (j(ranks=ranks[:256] + merges[::-1]), "inconsistent ranks"),
        "special_clash": (j(special_tokens={"<|endoftext|>": 5}), "special ids are integers >= "),
        "newer_version": (j(version=2), "format version 2"),
    }


def test_broken_tokenizer_json_is_one_line_value_error(tmp_path):
    "Each broken file (real, on disk) is a one-line ValueError naming the file, the problem and the fix: never a Rust panic."
    bpe = small_bpe()
    good = save_tokenizer(bpe, tmp_path / "good" / "tokenizer.json")
    text = "the quick brown fox, 東京 🙂 <|endoftext|> naïve\n\n  x"
    for loaded in (get_tokenizer(good), get_tokenizer(good.parent)):          # the good file loads as the same tokenizer
        assert tokenizer_hash(loaded) == tokenizer_hash(bpe) and loaded.encode_ordinary(text) == bpe.encode_ordinary(text)
        assert loaded.n_vocab == bpe.n_vocab and bos_id(loaded) == bos_id(bpe)
    for name, (content, says) in broken_copies(json.loads(good.read_text())).items():
        d = tmp_path / name
        d.mkdir()
        p = d / "tokenizer.json"
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        for where in (p, d):                                                   # the file, and the folder that holds it
            with pytest.raises(ValueError) as e:
                get_tokenizer(where)
            msg = str(e.value)
            assert says in msg and str(p) in msg, (name, msg)
            assert "\n" not in msg and "save_tokenizer(enc, path)" in msg and "--tokenizer bpe:N" in msg, (name, msg)


def test_broken_tokenizer_json_in_a_cli_exits_1_with_one_line(tmp_path):
    "Through a real CLI process: exit 1, one line on stderr naming the file, no traceback, no shards written."
    good = save_tokenizer(small_bpe(), tmp_path / "tokenizer.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(good.read_text()), "pat_str": ""}))
    (tmp_path / "a.txt").write_text("To be, or not to be: that is the question.\n" * 50)
    r = subprocess.run([sys.executable, "-m", "vibenanochat.data", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"),
                        "--tokenizer", str(bad), "--quiet"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "matches the empty string" in lines[0], r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


def test_trained_bpe_roundtrips_and_saves(tmp_path):
    text = need_asset("text/tiny_shakespeare_input.txt").read_text(encoding="utf-8")
    train, held = text[:500_000], text[500_000:] + " naïve café 東京 🙂 <|endoftext|>"
    bpe = train_tokenizer(train.split("\n\n"), 1000)
    assert bpe.n_vocab == 1000 and bos_id(bpe) == 999
    ids = bpe.encode_ordinary(held)
    assert bpe.decode(ids) == held and max(ids) < 999
    assert len(ids) < 0.6 * len(held.encode())  # it learned merges: far fewer tokens than bytes
    loaded = get_tokenizer(save_tokenizer(bpe, tmp_path / "tok" / "tokenizer.json"))
    assert loaded.encode_ordinary(held) == ids and tokenizer_hash(loaded) == tokenizer_hash(bpe)
    assert tokenizer_hash(get_tokenizer(tmp_path / "tok")) == tokenizer_hash(bpe)  # the folder form
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["tokenizer.json"]  # no temporary file left
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["x"], 200)
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer([], 300)


def test_literal_endoftext_is_ordinary_text(gpt2):
    text = "a <|endoftext|> b <|endoftext|>"
    ids = encode_doc(gpt2, text)
    assert ids[0] == 50256 and 50256 not in ids[1:] and gpt2.decode(ids[1:]) == text
    assert encode_docs(gpt2, [text, "", "x"], threads=2) == [ids, [50256], encode_doc(gpt2, "x")]


def test_token_bytes_sum_to_text_bytes(gpt2):
    bpe = train_tokenizer(["the quick brown fox " * 20, "東京 café"], 400)
    for enc in (gpt2, bpe):
        tb = token_bytes(enc)
        assert tb.shape == (enc.n_vocab,) and tb[bos_id(enc)] == 0 and int(tb.min()) == 0
        for text in list(corpus_texts().values())[:2] + ["東京 🙂 naïve <|endoftext|>", ""]:
            ids = encode_doc(enc, text)
            assert int(tb[ids].sum()) == len(text.encode("utf-8"))
    # partial UTF-8 tokens count their raw bytes (a decoded string would say 3 bytes of U+FFFD)
    partial = [t for t in range(gpt2.n_vocab - 1) if len(gpt2.decode_single_token_bytes(t)) == 1
               and gpt2.decode_single_token_bytes(t)[0] >= 0x80]
    assert len(partial) > 0 and all(token_bytes(gpt2)[t] == 1 for t in partial[:5])
