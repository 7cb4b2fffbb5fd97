"""Tokenizer: GPT-2 from local files, tiktoken's cache and offline; trained BPE; BOS handling; token_bytes."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import need_shared
from vibenanochat.tokenizer import (bos_id, encode_doc, encode_docs, get_tokenizer, save_tokenizer,
                                    token_bytes, tokenizer_hash, train_tokenizer)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    d = need_shared("tokenizers", "gpt2")
    return get_tokenizer(d)


def shared_texts() -> dict[str, str]:
    "Every shared corpus as one string per document source (files as they are, parquet rows joined)."
    root = need_shared("text")
    out = {p.name: p.read_text(encoding="utf-8") for p in sorted(root.rglob("*")) if p.suffix in (".txt", ".jsonl", ".csv")}
    for p in sorted(root.rglob("*.parquet")):
        out[p.name] = "\n\n".join(pq.read_table(p, columns=["text"]).column("text").to_pylist())
    return out


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode_ordinary("Hello world") == [15496, 995]
    assert gpt2.n_vocab == 50257 and bos_id(gpt2) == 50256 and gpt2.name == "gpt2"


def test_roundtrip_every_shared_corpus(gpt2):
    texts = shared_texts()
    assert len(texts) >= 5
    for name, text in texts.items():
        assert gpt2.decode(gpt2.encode_ordinary(text)) == text, name


def test_three_local_formats_are_one_tokenizer(gpt2, tmp_path):
    d = need_shared("tokenizers", "gpt2")
    h = tokenizer_hash(gpt2)
    assert tokenizer_hash(get_tokenizer(d / "r50k_base.tiktoken")) == h
    assert tokenizer_hash(get_tokenizer(d / "encoder.json")) == h
    only_tt = tmp_path / "tt"
    only_tt.mkdir()
    shutil.copy(d / "r50k_base.tiktoken", only_tt)
    assert tokenizer_hash(get_tokenizer(only_tt)) == h
    assert tokenizer_hash(get_tokenizer(save_tokenizer(gpt2, tmp_path / "g.json"))) == h


SCENARIOS = """
import os, sys
from vibenanochat.tokenizer import get_tokenizer, tokenizer_hash
def attempt(**env):
    for k in ("VNC_TOKENIZER_DIR", "TIKTOKEN_CACHE_DIR"): os.environ.pop(k, None)
    os.environ.update(env)
    try:
        e = get_tokenizer("gpt2")
        return f"ok {e.encode_ordinary('Hello world')} {tokenizer_hash(e)}"
    except SystemExit as x:
        return f"exit {x}"
d, tmp = sys.argv[1], sys.argv[2]
for env in [dict(VNC_TOKENIZER_DIR=d, TIKTOKEN_CACHE_DIR=tmp + "/empty"),   # the variable names a folder
            dict(VNC_TOKENIZER_DIR=tmp + "/nowhere"),                      # the variable names nothing
            dict(TIKTOKEN_CACHE_DIR=tmp + "/empty"),                       # offline, nothing local
            dict(TIKTOKEN_CACHE_DIR=tmp + "/cache")]:                      # tiktoken's own cache, offline
    print(attempt(**env))
"""


def test_gpt2_from_env_tiktoken_cache_and_offline(tmp_path):
    d = need_shared("tokenizers", "gpt2")
    cache = tmp_path / "cache"  # tiktoken names cached files by the sha1 of their URL
    cache.mkdir()
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for f in ("vocab.bpe", "encoder.json"):
        shutil.copy(d / f, cache / hashlib.sha1((base + f).encode()).hexdigest())
    env = {k: v for k, v in os.environ.items() if k not in ("VNC_TOKENIZER_DIR", "TIKTOKEN_CACHE_DIR")}
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[k] = "http://127.0.0.1:9"  # an unreachable proxy: the network fails fast and surely, online or not
    r = subprocess.run([sys.executable, "-c", SCENARIOS, str(d), str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    from_env, bad_env, offline, from_cache = r.stdout.strip().split("\n")
    assert from_env.startswith("ok [15496, 995]") and from_cache.startswith("ok [15496, 995]")
    assert from_env.split()[-1] == from_cache.split()[-1]  # our local loader builds exactly tiktoken's GPT-2
    assert bad_env.startswith("exit VNC_TOKENIZER_DIR=") and "nowhere" in bad_env
    assert offline.startswith("exit cannot load the GPT-2 tokenizer") and "VNC_TOKENIZER_DIR" in offline
    assert "--tokenizer" in offline


def test_bad_tokenizer_files(tmp_path):
    for name, content in [("t.json", '{"a": 1}'), ("x.json", "not json"), ("b.tiktoken", "@@@ 1\n")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(SystemExit, match=name):
            get_tokenizer(tmp_path / name)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(SystemExit, match="holds no tokenizer"):
        get_tokenizer(tmp_path / "emptydir")
    # a saved file whose content was edited no longer matches its hash
    bpe = train_tokenizer(["abc abd abe " * 50], 260)
    p = save_tokenizer(bpe, tmp_path / "bpe.json")
    obj = json.loads(p.read_text())
    obj["ranks"][0], obj["ranks"][1] = obj["ranks"][1], obj["ranks"][0]
    p.write_text(json.dumps(obj))
    with pytest.raises(SystemExit, match="corrupt"):
        get_tokenizer(p)


def test_trained_bpe_roundtrips_and_saves(tmp_path):
    text = need_shared("text", "tiny_shakespeare_input.txt").read_text(encoding="utf-8")
    train, held = text[:500_000], text[500_000:] + " naïve café 東京 🙂 <|endoftext|>"
    bpe = train_tokenizer(train.split("\n\n"), 1000)
    assert bpe.n_vocab == 1000 and bos_id(bpe) == 999
    ids = bpe.encode_ordinary(held)
    assert bpe.decode(ids) == held and max(ids) < 999
    assert len(ids) < 0.6 * len(held.encode())  # it learned merges: far fewer tokens than bytes
    loaded = get_tokenizer(save_tokenizer(bpe, tmp_path / "tok" / "tokenizer.json"))
    assert loaded.encode_ordinary(held) == ids and tokenizer_hash(loaded) == tokenizer_hash(bpe)
    assert tokenizer_hash(get_tokenizer(tmp_path / "tok")) == tokenizer_hash(bpe)  # the folder form
    assert not any(tmp_path.rglob("*.tmp"))
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
        for text in list(shared_texts().values())[:2] + ["東京 🙂 naïve <|endoftext|>", ""]:
            ids = encode_doc(enc, text)
            assert int(tb[ids].sum()) == len(text.encode("utf-8"))
    # partial UTF-8 tokens count their raw bytes (a decoded string would say 3 bytes of U+FFFD)
    partial = [t for t in range(gpt2.n_vocab - 1) if len(gpt2.decode_single_token_bytes(t)) == 1
               and gpt2.decode_single_token_bytes(t)[0] >= 0x80]
    assert len(partial) > 0 and all(token_bytes(gpt2)[t] == 1 for t in partial[:5])
