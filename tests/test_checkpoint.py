"""Loading checkpoints refuses damaged files in one line naming the problem and the fix: torn or foreign `model.pt`,
`meta.json` with an unknown or missing key, a config too big for this machine (refused before allocating), weights that
do not fit their config, incomplete optimizer shards, a data stream the checkpoint lacks."""
import json
import shutil

import pytest
import torch

import vibenanochat.checkpoint as checkpoint
from conftest import small_bpe, tiny_checkpoint
from vibenanochat.config import GPTConfig, count_params
from vibenanochat.dataloader import DataLoader
from vibenanochat.distmuon import DistMuonAdamW, merge_shards, reshard
from vibenanochat.model import GPT
from vibenanochat.muon import MuonAdamW, muon_adamw_groups


@pytest.fixture
def run(tmp_path):
    "A run folder with two complete checkpoints, steps 4 and 8, of a tiny model and its tokenizer."
    enc = small_bpe()
    for step in (4, 8): tiny_checkpoint(checkpoint.step_dir(tmp_path / "run", step), enc, step=step)
    return tmp_path / "run"


def one_line(exc_type, f, *args) -> str:
    with pytest.raises(exc_type) as e: f(*args)
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


def test_good_checkpoint_loads(run):
    model, _, meta = checkpoint.load_model_and_tokenizer(run)
    assert meta["step"] == 8 and model.config == checkpoint.model_config(meta)
    saved = checkpoint.load_state(checkpoint.step_dir(run, 8) / checkpoint.MODEL)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_torn_model_file_names_the_file_and_the_previous_step(run, damage):
    f = checkpoint.step_dir(run, 8) / checkpoint.MODEL
    data = f.read_bytes()
    f.write_bytes({"truncate": data[:len(data) // 2], "garbage": b"\x00not a checkpoint" * 100, "empty": b""}[damage])
    for load in (checkpoint.load_model, checkpoint.load_model_and_tokenizer):
        msg = one_line(ValueError, load, run)
        assert str(f) in msg and "corrupt or truncated" in msg and str(checkpoint.step_dir(run, 4)) in msg


def test_first_checkpoint_torn_says_there_is_no_earlier_one(run):
    f = checkpoint.step_dir(run, 4) / checkpoint.MODEL
    f.write_bytes(f.read_bytes()[:100])
    assert "first of its run" in one_line(ValueError, checkpoint.load_model, checkpoint.step_dir(run, 4))


def edit_meta(ckpt, edit):
    meta = json.loads((ckpt / checkpoint.META).read_text())
    edit(meta)
    (ckpt / checkpoint.META).write_text(json.dumps(meta))


def test_meta_json_keys_are_checked(run):
    ck = checkpoint.step_dir(run, 8)
    edit_meta(ck, lambda m: m["config"].update(n_heads=4))
    assert "unknown config key 'n_heads'" in one_line(ValueError, checkpoint.load_model, ck)
    edit_meta(ck, lambda m: (m["config"].pop("n_heads"), m["config"].pop("rope_base")))
    assert "lacks the config key 'rope_base'" in one_line(ValueError, checkpoint.load_model_and_tokenizer, ck)
    edit_meta(ck, lambda m: m.pop("config"))
    assert "has no model config" in one_line(ValueError, checkpoint.load_meta, ck)
    (ck / checkpoint.META).write_text('{"config": {"vocab_size": 3')            # torn JSON
    assert "corrupt or truncated" in one_line(ValueError, checkpoint.load_model, ck)
    (ck / checkpoint.META).unlink()
    assert "no meta.json" in one_line(FileNotFoundError, checkpoint.load_meta, ck)
    good = checkpoint.step_dir(run, 4)
    assert "lacks the key 'world_size'" in one_line(ValueError, checkpoint.load_meta, good, "step", "world_size")


def test_too_big_config_is_refused_before_allocating(run):
    ck = checkpoint.step_dir(run, 8)
    edit_meta(ck, lambda m: m["config"].update(n_embd=2**22, n_head=2**16))      # a width of 4 M: ~10^14 bytes
    need = 4 * count_params(checkpoint.model_config(checkpoint.load_meta(ck), ck))["total"]
    assert need > checkpoint.free_memory("cpu")                  # allocating it would fail (or swap the machine to death)
    msg = one_line(ValueError, checkpoint.load_model, ck)
    assert "more than half" in msg and f"{need / 1e9:,.1f} GB" in msg and str(ck) in msg
    # and a model that fits is accepted by the same check
    cfg = GPTConfig.from_depth(1, vocab_size=320)
    assert checkpoint.check_fits(cfg) == 4 * sum(p.numel() for p in GPT(cfg).parameters())


def test_weights_that_do_not_fit_their_config(run, tmp_path):
    ck = checkpoint.step_dir(run, 8)
    state = checkpoint.load_state(ck / checkpoint.MODEL)
    state["lm_head.weight"] = state["lm_head.weight"][:-1]
    torch.save(state, ck / checkpoint.MODEL)
    assert "'lm_head.weight' has shape" in one_line(ValueError, checkpoint.load_model, ck)
    torch.save([1, 2, 3], ck / checkpoint.MODEL)
    assert "not a model state dict" in one_line(ValueError, checkpoint.load_model, ck)


def test_find_checkpoint_errors_are_one_line(tmp_path):
    assert "does not exist" in one_line(FileNotFoundError, checkpoint.find_checkpoint, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no checkpoint in" in one_line(FileNotFoundError, checkpoint.find_checkpoint, tmp_path / "empty")


def shards_of(model, W):
    "The optimizer shares W ranks would save, cut from a whole state full of distinct numbers."
    whole = MuonAdamW(muon_adamw_groups(model, depth=1, total_batch_size=512), compile=False)
    for _, _, st in whole._state_entries():
        for v in st.values():
            if isinstance(v, torch.Tensor): v.copy_(torch.randn_like(v))
    out = []
    for r in range(W):
        o = DistMuonAdamW(muon_adamw_groups(model, depth=1, total_batch_size=512), compile=False, world_size=W, rank=r)
        o.load_state_dict(reshard([whole.state_dict()], o))
        out.append(o.state_dict())
    return whole, out


def test_reshard_is_exact_and_refuses_incomplete_or_inconsistent_shares():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(1, vocab_size=320, seq_len=16, layer_scalars=True, value_embeds=True))
    whole, three = shards_of(model, 3)
    merged = merge_shards(three, whole)["state"]
    for key, _, st in whole._state_entries():              # element-wise equal, every tensor
        assert all(torch.equal(merged[key][k], v) for k, v in st.items() if isinstance(v, torch.Tensor)), key
    assert "pass all 2 shards" in one_line(ValueError, merge_shards, three[:2], whole)
    tiny = next(k for k, st in three[1]["state"].items() if k.startswith("g") and ".p" in k and st["exp_avg"].numel() < 1024)
    three[1]["state"][tiny]["exp_avg"] += 1                # a replicated tensor that differs between ranks
    assert "copies of" in one_line(ValueError, merge_shards, three, whole)


def test_missing_stream_is_one_line(shakespeare_shards, tmp_path):
    "A checkpoint whose loader files lack a stream this run needs (another batch shape): one line, not a KeyError."
    ck = tmp_path / "ck"
    ck.mkdir()
    loaders = [DataLoader(shakespeare_shards, 2, 32, rank=s, world_size=4, prefetch=0) for s in range(4)]
    for l in loaders: next(l)
    (ck / checkpoint.META).write_text(json.dumps({"world_size": 2, "config": GPTConfig().to_dict()}))
    for r in range(2): torch.save([l.state_dict() for l in loaders[2 * r:2 * r + 2]], ck / checkpoint.loader_file(r))
    fresh = [DataLoader(shakespeare_shards, 2, 32, rank=s, world_size=4, prefetch=0) for s in (1, 3)]
    checkpoint.load_loaders(ck, fresh)                       # streams 1 and 3, from two different rank files
    assert [torch.equal(torch.cat(next(f)), torch.cat(next(loaders[s]))) for f, s in zip(fresh, (1, 3))] == [True, True]
    other = [DataLoader(shakespeare_shards, 2, 32, rank=5, world_size=8, prefetch=0)]
    assert "not stream 5" in one_line(ValueError, checkpoint.load_loaders, ck, other)
    shutil.rmtree(ck)
