"""Dataloader: equality to a naive best-fit packer, rank split, exact resume (1 and 2 ranks, with the
prefetch thread, through JSON and torch.save), the validation pass, refusals, and torchrun."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import need_asset
import vibenanochat.data as data
from vibenanochat.dataloader import DataLoader
from vibenanochat.tokenizer import get_tokenizer


def pieces_jsonl(path, n=None):
    "Tiny Shakespeare cut into pieces of at most 2,000 characters (about 550 tokens), as a .jsonl file."
    ps = list(data.read_txt(need_asset("text/tiny_shakespeare_input.txt")))[:n]
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in ps))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    "Tiny Shakespeare's speeches plus the play in pieces, in small shards: short and long documents, many row groups."
    enc = get_tokenizer(need_asset("tokenizers/gpt2"))
    d = tmp_path_factory.mktemp("dl") / "mix"
    src = tmp_path_factory.mktemp("src")
    os.symlink(need_asset("text/tiny_shakespeare_input.txt"), src / "a.txt")
    pieces_jsonl(src / "b.jsonl")
    data.prepare(str(src), d, enc, split="blank", shard_docs=1024, val_docs=300, window_docs=4096, progress=False)
    return d


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    "150 pieces of the play (about 80 k tokens) in shards of 32: a loader wraps its epochs quickly."
    enc = get_tokenizer(need_asset("tokenizers/gpt2"))
    d = tmp_path_factory.mktemp("dl") / "small"
    src = pieces_jsonl(tmp_path_factory.mktemp("src") / "pieces.jsonl", 150)
    data.prepare(str(src), d, enc, shard_docs=32, val_docs=16, window_docs=512, progress=False)
    return d


def rank_docs(d, rank, world):
    "A rank's documents, read independently of the loader: each train shard's row groups rank, rank+world, ..."
    m = data.load_manifest(d)
    out = []
    for f in m["train_shards"]:
        pf = pq.ParquetFile(d / f)
        for g in range(rank, pf.num_row_groups, world):
            out += [np.array(x, dtype=np.int64) for x in pf.read_row_group(g).column("tokens").to_pylist()]
    return out


def naive_batches(docs, B, T, buffer_docs, n):
    "Best-fit packing by linear scans: largest (length, arrival) that fits, else the shortest, cropped."
    stream = ((i, docs[i % len(docs)]) for i in range(10 ** 9))
    buf, out = [], []
    for _ in range(n):
        rows = []
        for _ in range(B):
            row = []
            while len(row) < T + 1:
                while len(buf) < buffer_docs:
                    buf.append(next(stream))
                space = T + 1 - len(row)
                fits = [b for b in buf if len(b[1]) <= space]
                pick = max(fits, key=lambda b: (len(b[1]), b[0])) if fits else min(buf, key=lambda b: (len(b[1]), b[0]))
                buf.remove(pick)
                row += pick[1][:space].tolist()
            rows.append(row)
        t = torch.tensor(rows)
        out.append((t[:, :-1], t[:, 1:]))
    return out


@pytest.mark.parametrize("rank,world,buffer_docs,n", [(0, 1, 1000, 60), (1, 2, 50, 300)])
def test_equals_naive_best_fit(corpus, rank, world, buffer_docs, n):
    ref = naive_batches(rank_docs(corpus, rank, world), 4, 200, buffer_docs, n)  # 300 batches cross an epoch
    dl = DataLoader(corpus, 4, 200, rank=rank, world_size=world, buffer_docs=buffer_docs)
    for x, y in ref:
        a, b = next(dl)
        assert torch.equal(a, x) and torch.equal(b, y)
    if world == 2:
        assert dl.stats()["epoch"] >= 2
    dl.close()


def test_ranks_partition_the_documents(corpus):
    every = sorted(map(bytes, (d.astype(np.uint16) for d in rank_docs(corpus, 0, 1))))
    split = sorted(map(bytes, (d.astype(np.uint16) for r in range(3) for d in rank_docs(corpus, r, 3))))
    assert every == split and len(every) == data.load_manifest(corpus)["documents"]["train"]


def take(dl, n):
    return [torch.cat(next(dl)) for _ in range(n)]


@pytest.mark.parametrize("world", [1, 2])
def test_exact_resume(small, tmp_path, world):
    corpus = small
    for rank in range(world):
        kw = dict(B=3, T=256, rank=rank, world_size=world, buffer_docs=40)
        a = DataLoader(corpus, **kw)
        take(a, 25)
        state = a.state_dict()
        cont = take(a, 150)  # long enough to wrap into the next epoch
        assert a.stats()["epoch"] >= 2
        a.close()
        # the state survives JSON and a weights_only torch checkpoint
        torch.save({"loader": state}, tmp_path / "ck.pt")
        state2 = torch.load(tmp_path / "ck.pt", weights_only=True)["loader"]
        assert json.loads(json.dumps(state)) == state == state2
        b = DataLoader(corpus, **kw)
        b.load_state_dict(state2)
        assert all(torch.equal(u, v) for u, v in zip(cont, take(b, 150)))
        assert b.stats() == a.stats()
        b.close()
        # a loader with prefetch=0 and one whose thread is stopped mid-way agree with both
        c = DataLoader(corpus, prefetch=0, **kw)
        c.load_state_dict(state)
        first = take(c, 20)
        c.close()  # nothing to stop; harmless
        d = DataLoader(corpus, **kw)
        d.load_state_dict(state)
        first_d = take(d, 10)
        d.close()  # the thread ran ahead; close rewinds to the last batch returned
        first_d += take(d, 10)
        d.close()
        assert all(torch.equal(u, v) for u, v in zip(first, cont[:20])) and all(torch.equal(u, v) for u, v in zip(first_d, cont[:20]))


def test_rank_and_world_from_torchrun_environment(small, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dl = DataLoader(small, 2, 32, prefetch=0)
    assert (dl.rank, dl.world) == (1, 2)
    x, _ = next(dl)
    assert torch.equal(x, naive_batches(rank_docs(small, 1, 2), 2, 32, 1000, 1)[0][0])
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        DataLoader(small, 2, 32, prefetch=0)


def test_resume_refuses_another_rank(corpus):
    s = DataLoader(corpus, 2, 32, rank=0, world_size=2, prefetch=0).state_dict()
    with pytest.raises(ValueError, match="rank"):
        DataLoader(corpus, 2, 32, rank=1, world_size=2, prefetch=0).load_state_dict(s)


def test_validation_pass(corpus):
    m = data.load_manifest(corpus)
    seen = 0
    for rank in range(2):
        dl = DataLoader(corpus, 2, 128, split="val", rank=rank, world_size=2)
        batches = list(dl)
        assert len(batches) > 0 and all(x.shape == (2, 128) for x, _ in batches)
        with pytest.raises(StopIteration):
            next(dl)
        s = dl.stats()
        assert s["epoch"] == 1 and s["tokens"] == len(batches) * 2 * 129
        seen += s["tokens"] + s["cropped"]
    assert seen <= m["tokens"]["val"]
    capped = list(DataLoader(corpus, 2, 128, split="val", max_batches=3))
    assert len(capped) == 3


def test_rows_start_with_bos_and_no_padding(corpus):
    dl = DataLoader(corpus, 8, 512, prefetch=0)
    for _ in range(20):
        x, y = next(dl)
        assert (x[:, 0] == 50256).all() and (x[:, 1:] == y[:, :-1]).all() and x.dtype == torch.int64
    s = dl.stats()
    assert s["tokens"] == 20 * 8 * 513 and 0 < s["crop_pct"] < 50 and s["documents"] > 0


def test_too_many_ranks_is_a_clear_error(corpus):
    groups = max(pq.ParquetFile(corpus / f).num_row_groups for f in data.load_manifest(corpus)["train_shards"])
    with pytest.raises(ValueError, match="gets no training documents"):
        next(DataLoader(corpus, 2, 32, rank=groups, world_size=groups + 1))


TORCHRUN = r"""
import sys, torch, torch.distributed as dist
from vibenanochat.dataloader import DataLoader
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
dl = DataLoader(sys.argv[1], 2, 64)  # rank and world size from the process group
assert (dl.rank, dl.world) == (rank, world)
for _ in range(5): next(dl)
state = dl.state_dict()
cont = [torch.cat(next(dl)) for _ in range(10)]
dl.close()
again = DataLoader(sys.argv[1], 2, 64)
again.load_state_dict(state)
assert all(torch.equal(a, b) for a, b in zip(cont, [torch.cat(next(again)) for _ in range(10)]))
again.close()
firsts = [None] * world
dist.all_gather_object(firsts, cont[0].tolist())
if rank == 0:
    assert firsts[0] != firsts[1]
    print("ok", world)
dist.destroy_process_group()
"""


def test_torchrun_two_ranks(corpus, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(corpus)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok 2" in r.stdout, r.stderr[-3000:]
