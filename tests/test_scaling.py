"""Scaling-law fits recover known laws from noisy synthetic tables; bad rows warn instead of crashing;
the CLI writes every plot; the sweep runner skips finished runs, survives failures, and launches through torchrun."""
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from conftest import REPO, need_asset

import vibenanochat.scaling as sc
import vibenanochat.sweep as sw

LAW = sc.CHINCHILLA
A_TRUE = LAW["beta"] / (LAW["alpha"] + LAW["beta"])     # N_opt ∝ C^a for the Chinchilla law


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isoflop_fits_recover_known_optima_and_exponents(seed):
    rows = sc.synthetic_results(seed=seed, noise=0.003)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # the fixed-ratio rows are left out of the isoflop fits
        optima = sc.isoflop_optima(rows)
    C = np.array([o["budget"] for o in optima])
    N_true, D_true = sc.chinchilla_optimal(C, **LAW)
    # tolerance: 0.1 decade (26 %) per budget for N_opt and D_opt
    assert np.all(np.abs(np.log10([o["N_opt"] for o in optima]) - np.log10(N_true)) < 0.1)
    assert np.all(np.abs(np.log10([o["D_opt"] for o in optima]) - np.log10(D_true)) < 0.1)
    assert np.all(np.abs(np.log10([o["N_opt_spline"] for o in optima]) - np.log10(N_true)) < 0.1)
    s = sc.optimal_scaling(optima)
    # tolerance: exponents within 0.05 of β/(α+β) = 0.452 and α/(α+β) = 0.548
    assert abs(s["N"]["exponent"] - A_TRUE) < 0.05 and abs(s["D"]["exponent"] - (1 - A_TRUE)) < 0.05
    # the constant: the fitted law's N_opt at the middle budget within 15 % of the truth
    Cm = s["C_mid"]
    assert abs(s["N"]["coef"] * Cm ** s["N"]["exponent"] / sc.chinchilla_optimal(Cm, **LAW)[0] - 1) < 0.15
    # tokens/param at the optimum: truth D/N at the middle budget, within 25 %
    ratio_true = np.divide(*sc.chinchilla_optimal(Cm, **LAW)[::-1])
    assert abs(s["tokens_per_param_mid"] / ratio_true - 1) < 0.25


def test_jackknife_error_covers_the_truth_and_grows_with_noise():
    spreads = []
    for noise in (0.001, 0.01):
        rows = [r for r in sc.synthetic_results(budgets=(1e19,), noise=noise, seed=3) if r["budget"] == 1e19]
        x, y = np.log10([r["N"] for r in rows]), np.array([r["val_bpb"] for r in rows])
        sd = sc.jackknife_std(x, y)
        truth = np.log10(sc.chinchilla_optimal(1e19, **LAW)[0])
        assert abs(sc.fit_parabola(x, y)["x_opt"] - truth) < max(4 * sd, 0.03)
        spreads.append(sd)
    assert spreads[1] > 3 * spreads[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_vs_compute_recovers_constants(seed):
    rng = np.random.default_rng(seed)
    a, b, c = 73.12, 0.122, 0.485                       # test constants: a made-up law
    C = np.geomspace(3e16, 3e19, 9)
    L = sc.loss_law(C, a, b, c) * (1 + 0.002 * rng.standard_normal(len(C)))
    f = sc.fit_loss_vs_compute(C, L)
    # tolerances: b within 0.025, c within 0.05 bpb, R² > 0.999, the law itself within 0.5 % over the range
    assert abs(f["b"] - b) < 0.025 and abs(f["c"] - c) < 0.05 and f["r2"] > 0.999
    assert np.max(np.abs(sc.loss_law(C, f["a"], f["b"], f["c"]) / sc.loss_law(C, a, b, c) - 1)) < 0.005
    # the inverse undoes the law
    assert np.allclose(sc.compute_for_loss(sc.loss_law(C, f["a"], f["b"], f["c"]), f["a"], f["b"], f["c"]), C, rtol=1e-6)


def test_loss_vs_compute_exact_power_law_without_noise():
    C = np.geomspace(1e15, 1e18, 6)
    f = sc.fit_loss_vs_compute(C, sc.loss_law(C, 20.0, 0.2, 0.7))
    assert np.isclose(f["b"], 0.2, rtol=1e-3) and np.isclose(f["c"], 0.7, rtol=1e-3) and np.isclose(f["a"], 20, rtol=1e-2)


def test_chinchilla_approach3_recovers_the_law():
    rows = sc.synthetic_results(seed=1, noise=0.003)
    f = sc.fit_chinchilla([r["N"] for r in rows], [r["tokens"] for r in rows], [r["val_bpb"] for r in rows])
    # tolerances: E within 0.15, α and β within 0.06, N_opt exponent within 0.04
    assert abs(f["E"] - LAW["E"]) < 0.15 and abs(f["alpha"] - LAW["alpha"]) < 0.06 and abs(f["beta"] - LAW["beta"]) < 0.06
    assert abs(f["a"] - A_TRUE) < 0.04
    # and the fitted law predicts the noiseless loss within 0.5 % everywhere on the data
    N, D = np.array([r["N"] for r in rows]), np.array([r["tokens"] for r in rows])
    pred = sc.chinchilla_loss(N, D, f["E"], f["A"], f["B"], f["alpha"], f["beta"])
    assert np.max(np.abs(pred / sc.chinchilla_loss(N, D, **LAW) - 1)) < 0.005


def test_flops_ratio_per_run_and_budget():
    rows = sc.synthetic_results(budgets=(1e18, 1e19), ratio_N=())
    for i, r in enumerate(rows): r["flops"] = 6 * r["N"] * r["tokens"] * (1.1 if r["budget"] == 1e19 else 1.0)
    fr = sc.flops_ratio(rows)
    assert np.isclose(fr["per_budget"][1e18]["mean"], 1.0) and np.isclose(fr["per_budget"][1e19]["mean"], 1.1)
    assert len(fr["runs"]) == len(rows)


def _messages(ws):
    return "\n".join(str(w.message) for w in ws)


def test_failed_nan_and_thin_budgets_warn_without_crashing(tmp_path):
    rows = sc.synthetic_results(budgets=(1e18, 1e19, 1e20), ratio_N=(), seed=4)
    rows[0]["status"] = "failed"
    rows[1]["val_bpb"] = math.nan
    thin = [r for r in rows if r["budget"] == 1e20]
    for r in thin[2:]: r["status"] = "incomplete"         # leaves budget 1e20 with 2 usable runs
    path = sc.write_results(rows, tmp_path / "holes.csv")
    back = sc.read_results(path)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        res = sc.analyze(back)
        made = sc.write_plots(back, res, tmp_path / "plots")
    msg = _messages(ws)
    assert f"{rows[0]['run']} (failed)" in msg and f"{rows[1]['run']} (no val_bpb)" in msg
    assert "budget 1e+20: only 2 usable model size(s)" in msg
    assert [o["budget"] for o in res["optima"]] == [1e18, 1e19]
    assert res["scaling"] is not None and "optimal_vs_flops" in made


def test_tiny_table_warns_and_skips_every_fit(tmp_path):
    rows = sc.synthetic_results(budgets=(1e18,), per_budget=2, ratio_N=())
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        res = sc.analyze(rows)
        made = sc.write_plots(rows, res, tmp_path)
        text = sc.summarize(res)
    msg = _messages(ws)
    assert "needs >= 3" in msg and "power laws need optima at >= 2 budgets" in msg and "Chinchilla fit needs >= 5" in msg
    assert "plots skipped" in msg and set(made) == {"flops_ratio"}
    assert res["optima"] == [] and res["scaling"] is None and res["chinchilla"] is None and "runs: 2" in text


def test_no_u_shape_and_edge_optimum_warn():
    C = 1e19
    Ns = sc.chinchilla_optimal(C, **LAW)[0] * np.logspace(0.3, 1.2, 5)   # every run larger than the optimum
    rows = [dict(run=f"r{i}", status="ok", budget=C, N=N, tokens=C / (6 * N),
                 val_bpb=float(sc.chinchilla_loss(N, C / (6 * N), **LAW))) for i, N in enumerate(Ns)]
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        opt = sc.isoflop_optima(rows)
    msg = _messages(ws)
    assert "no U shape" in msg or ("lies outside the swept sizes" in msg and "add smaller depths" in msg)
    assert len(opt) == 1 and not (opt[0]["inside"] and opt[0]["convex"])


def test_read_results_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found") as e:
        sc.read_results(tmp_path / "absent.csv")
    assert "\n" not in str(e.value)
    (tmp_path / "bad.csv").write_text("budget,depth,loss\n1e18,4,3.2\n")
    with pytest.raises(ValueError, match="lacks column") as e:
        sc.read_results(tmp_path / "bad.csv")
    assert "\n" not in str(e.value)


def test_published_numbers_with_few_columns_fit(tmp_path):
    "A hand-written table (budget, N, tokens, val_bpb only) is enough for the isoflop fits."
    rows = sc.synthetic_results(budgets=(1e18, 1e19, 1e20), ratio_N=(), noise=0.0)
    lines = ["budget,N,tokens,val_bpb"] + [f"{r['budget']:g},{r['N']:.6g},{r['tokens']:.6g},{r['val_bpb']:.6f}" for r in rows]
    (tmp_path / "pub.csv").write_text("\n".join(lines) + "\n")
    back = sc.read_results(tmp_path / "pub.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sc.analyze(back)
    assert len(res["optima"]) == 3 and res["flops_ratio"] is None
    assert abs(res["scaling"]["N"]["exponent"] - A_TRUE) < 0.05


@pytest.mark.parametrize("form", ["module", "path"])
def test_cli_fit_writes_every_plot(tmp_path, form):
    table = sc.synthetic_results(budgets=(1e18, 1e19, 1e20), per_budget=5, ratio_N=(3e7, 1e8, 3e8, 1e9))
    csv = sc.write_results(table, tmp_path / "results.csv")
    out = tmp_path / "fits"
    entry = ["-m", "vibenanochat.sweep"] if form == "module" else [str(REPO / "vibenanochat" / "sweep.py")]
    r = subprocess.run([sys.executable, *entry, "fit", str(csv), "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in sc.PLOTS:
        p = out / f"{name}.png"
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    fits = json.loads((out / "fits.json").read_text())
    assert abs(fits["scaling"]["N"]["exponent"] - A_TRUE) < 0.05
    assert "N_opt = " in r.stdout and (out / "summary.txt").read_text().strip() in r.stdout


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vibenanochat.sweep", "fit", str(tmp_path / "nope.csv")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "vibenanochat.sweep", "sweep", "--ngpus", "2", "--depths", "10",
                        "--budgets", "1e18", "--extra", "--run x", "--plan"], capture_output=True, text=True)
    assert r.returncode != 0 and "torchrun would refuse the trainer flag(s) --run" in r.stderr and "Traceback" not in r.stderr


def test_final_metrics_takes_the_last_end_line_and_ignores_torn_lines(tmp_path):
    lines = [{"step": 1, "loss": 9.0}, {"event": "end", "step": 10, "val_bpb": 2.0},
             {"step": 11, "loss": 3.0}, {"event": "end", "step": 20, "val_bpb": 1.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + '\n{"event": "end", "st')
    assert sw.final_metrics(tmp_path)["val_bpb"] == 1.5
    (tmp_path / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n")
    assert sw.final_metrics(tmp_path) is None and sw.final_metrics(tmp_path / "absent") is None


# A stand-in for vibenanochat.train with the same command line and metrics.jsonl contract: the runner is
# what is under test here, so the trainer's cost is replaced by a law; depth 3 always crashes.
STANDIN = textwrap.dedent('''
    import argparse, json, os, sys
    from pathlib import Path
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int); p.add_argument("--target-flops", type=float)
    p.add_argument("--target-param-data-ratio", type=float); p.add_argument("--run-name"); p.add_argument("--log-dir")
    p.add_argument("--tag"); p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Path(a.log_dir) / a.run_name
    d.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        with open(Path(a.log_dir) / "launches.txt", "a") as f: f.write(f"{a.run_name} world={world} tag={a.tag} resume={a.resume}\\n")
    if a.depth == 3:
        print("simulated crash: out of memory", file=sys.stderr); sys.exit(3)
    if a.depth == 5 and not a.resume:          # interrupted: a checkpoint but no end line
        (d / "checkpoints" / "step_000010").mkdir(parents=True, exist_ok=True); sys.exit(130)
    N = 1e6 * a.depth ** 2
    tokens = a.target_flops / (6 * N) if a.target_flops else a.target_param_data_ratio * N
    loss = 1.5 + 40 / N ** 0.3 + 40 / tokens ** 0.3
    if rank == 0:
        with open(d / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 1, "loss": 10.0}) + "\\n")
            f.write(json.dumps({"event": "end", "step": 100, "val_bpb": loss, "params_N": N, "params_total": 2 * N,
                                "tokens": tokens, "flops": 6 * N * tokens, "time": 1.0, "depth": a.depth}) + "\\n")
''')


def _standin(tmp_path, monkeypatch):
    (tmp_path / "standin_train.py").write_text(STANDIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))


def test_sweep_skips_finished_runs_and_survives_failures(tmp_path, monkeypatch):
    _standin(tmp_path, monkeypatch)
    specs, _ = sw.plan_sweep((1, 2, 3, 4), (1e13, 1e14))
    logs, results = tmp_path / "runs", tmp_path / "results.csv"
    said = []
    rows = sw.run_sweep(specs, logs, extra=["--tag", "x"], results=results, module="standin_train", echo=said.append)
    status = {r["run"]: r["status"] for r in rows}
    assert status == {s.name: ("failed" if s.depth == 3 else "ok") for s in specs}
    assert any("FAILED (exit 3)" in s and "simulated crash" in s for s in said)
    table = sc.read_results(results)
    assert len(table) == 8 and {r["status"] for r in table} == {"ok", "failed"}
    ok = [r for r in table if r["status"] == "ok"]
    assert all(r["N"] == 1e6 * r["depth"] ** 2 and r["steps"] == 100 for r in ok)
    # second pass: finished runs are skipped, failed ones are tried again
    sw.run_sweep(specs, logs, results=results, module="standin_train", echo=said.append)
    launches = (logs / "launches.txt").read_text().splitlines()
    assert len(launches) == 8 + 2 and all("d3_" in l for l in launches[8:])
    assert sum("finished earlier, skipped" in s for s in said) == 6
    # the table can be rebuilt from the folders alone
    again = sw.collect_results(logs)
    assert [(r["run"], r["status"]) for r in again] == [(r["run"], r["status"]) for r in table]


def test_torchrun_refuses_ambiguous_trainer_flags():
    with pytest.raises(ValueError, match="--max .*ambiguous abbreviations"):
        sw.train_command(sw.RunSpec(2, ratio=10), "logs", ngpus=2, extra=["--max", "3"])
    assert sw.train_command(sw.RunSpec(2, ratio=10), "logs", ngpus=1, extra=["--max", "3"])[-2:] == ["--max", "3"]


def test_sweep_resumes_an_interrupted_run(tmp_path, monkeypatch):
    _standin(tmp_path, monkeypatch)
    specs, _ = sw.plan_sweep((5,), (1e14,))
    logs = tmp_path / "runs"
    assert sw.run_sweep(specs, logs, module="standin_train", echo=lambda s: None)[0]["status"] == "failed"
    assert sw.run_sweep(specs, logs, module="standin_train", echo=lambda s: None)[0]["status"] == "ok"
    assert [l.split()[-1] for l in (logs / "launches.txt").read_text().splitlines()] == ["resume=False", "resume=True"]


def test_sweep_launches_through_torchrun(tmp_path, monkeypatch):
    _standin(tmp_path, monkeypatch)
    specs, _ = sw.plan_sweep((2,), ratio=10.0)
    rows = sw.run_sweep(specs, tmp_path / "runs", ngpus=2, module="standin_train", echo=lambda s: None)
    assert rows[0]["status"] == "ok" and rows[0]["ratio"] == 10 and math.isnan(rows[0]["budget"])
    assert "world=2" in (tmp_path / "runs" / "launches.txt").read_text()
    state = json.loads((tmp_path / "runs" / "d2_R10" / "sweep.json").read_text())
    assert state["returncode"] == 0 and "--nproc_per_node=2" in state["command"]


def test_cli_sweep_plan_prints_every_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vibenanochat.sweep", "sweep", "--scale", "gpu", "--ngpus", "8",
                        "--out", str(tmp_path / "s"), "--plan"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmds = [l for l in r.stdout.splitlines() if "--target-flops" in l]
    assert len(cmds) == 24 and all("--nproc_per_node=8 -m vibenanochat.train --depth" in l for l in cmds)
    assert {l.split("--target-flops ")[1].split()[0] for l in cmds} == {"1e18", "2e18", "3e18", "6e18"}
    assert not (tmp_path / "s").exists()                 # a plan trains and writes nothing


def test_cli_sweep_with_the_real_trainer(tmp_path):
    "prepare_sweep_data + `sweep` through vibenanochat.train on a tiny corpus: real end lines, then skips on a rerun."
    from vibenanochat.config import GPTConfig, count_params
    text = need_asset("text/tiny_shakespeare_input.txt")
    data_dir = sw.prepare_sweep_data(tmp_path / "data", source=str(text), vocab=320, max_tokens=60_000, bpe_chars=300_000)
    vocab = json.loads((data_dir / "manifest.json").read_text())["vocab_size"]
    out = tmp_path / "sweep"
    extra = f"--data-dir {data_dir} --seq-len 64 --device-batch-size 4 --total-batch-size 256 --eval-every -1 --eval-tokens 2048"
    cmd = [sys.executable, "-m", "vibenanochat.sweep", "sweep", "--scale", "cpu", "--depths", "1,2,3", "--budgets", "5e10",
           "--out", str(out), "--extra", extra]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = sc.read_results(out / "results.csv")
    assert [(x["run"], x["status"]) for x in rows] == [("d1_C5e10", "ok"), ("d2_C5e10", "ok"), ("d3_C5e10", "ok")]
    for x in rows:
        cfg = GPTConfig.from_depth(int(x["depth"]), vocab_size=vocab, seq_len=64)
        assert x["N"] == count_params(cfg)["N"] and x["tokens"] == 256 * x["steps"]
        assert abs(x["flops"] / 5e10 - 1) < 0.05 and 0 < x["val_bpb"] < 10 and math.isnan(x["core"])
    assert (out / "bpb_vs_params.png").is_file() and "isoflop optima" in (out / "summary.txt").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("finished earlier, skipped") == 3
