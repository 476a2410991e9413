"""ablation.py: the whole protocol end to end on the tiny preset, skipping finished runs, resuming a killed
training, and the pairing of the four variants (same initial weights, same batches, same flow noise)."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests"))
import train  # noqa: E402,F401  at collection: importing timm/torchvision after a MuJoCo EGL context segfaults
import ablation  # noqa: E402
from synthetic import make_dataset  # noqa: E402


def run(tmp, *args, check=True):
    cmd = [sys.executable, "ablation.py", "--preset", "tiny", "--out", str(tmp / "res"), "--runs-dir",
           str(tmp / "runs"), "--data-dir", str(tmp / "data"), *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None


def mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_end_to_end_then_everything_skipped(tmp_path):
    r, s = run(tmp_path)
    assert s["ran"] == 13 and s["reported"] and s["progress"] == {"data": "1/1", "pretrain": "1/1", "finetune": "5/5", "eval": "6/6"}
    res = tmp_path / "res"
    for f in ("report.md", "compare.md", "compare.json", "summary.json", "success.png", "gain_vs_events.png", "sweep.png"):
        assert (res / f).stat().st_size > 100, f
    records = sorted((res / "runs").glob("*.json"))
    assert len(records) == 13
    for p in records:
        rec = json.loads(p.read_text())
        assert rec["command"].startswith("python ") and rec["git_revision"] and "wall_s" in rec, p
    ev = json.loads((res / "eval" / "ss0.1_ks0.1__s0" / "results.json").read_text())
    assert ev["command"] == json.loads((res / "runs" / "eval__ss0.1_ks0.1__s0.json").read_text())["command"]
    summary = json.loads((res / "summary.json").read_text())
    assert summary["reduced"] and summary["seeds_reported"] == [0] and not summary["missing"]
    cell = summary["compare"]["tasks"]["lift_block"]["variants"]
    assert list(cell) == ["none", "SS", "KS", "SS+KS", "base"] and all(c["episodes"] == 2 for c in cell.values())
    assert {(p["stage_weight"], p["keyframe_weight"]) for p in summary["sweep"]} == {(0.1, 0.1), (1.0, 0.1)}
    report = (res / "report.md").read_text()
    assert "Reduced protocol" in report and "| lift_block | SS+KS |" in report and "Loss-weight sweep" in report
    assert set(summary["compare"]["paired"]) == {"SS", "KS", "SS+KS", "base"}

    before = mtimes(tmp_path)
    r, s = run(tmp_path)
    assert s["ran"] == 0 and not s["reported"] and "everything selected is done" in r.stdout
    assert mtimes(tmp_path) == before, "a second invocation must not touch anything"

    # a run whose record is lost is done again (train.py --resume continues its finished checkpoint)
    (res / "runs" / "finetune__ss0.1_ks0.1__s0.json").unlink()
    r, s = run(tmp_path, "--only", "finetune", "--seed", "0")
    assert s["ran"] == 1 and "start step 2" in r.stdout

    # other options for a finished run: a clear error, nothing overwritten
    r, _ = run(tmp_path, "--finetune-steps", "3", check=False)
    assert r.returncode == 2 and "recorded for another command" in r.stderr


def test_killed_training_resumes(tmp_path):
    run(tmp_path, "--only", "data")
    args = ["--only", "pretrain", "--pretrain-steps", "200", "--save-every", "10"]
    cmd = [sys.executable, "ablation.py", "--preset", "tiny", "--out", str(tmp_path / "res"), "--runs-dir",
           str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ck = tmp_path / "runs" / "pretrain" / "ckpt.pt"
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # our own child and its process group only
    proc.wait()
    assert ck.exists(), "no checkpoint was written before the kill"
    assert not (tmp_path / "res" / "runs" / "pretrain.json").exists()
    r, s = run(tmp_path, *args)
    start = int(re.search(r"start step (\d+)", r.stdout).group(1))
    assert start > 0 and start % 10 == 0 and start < 200 and s["ran"] == 1
    rec = json.loads((tmp_path / "res" / "runs" / "pretrain.json").read_text())
    assert rec["result"]["last_metrics"]["step"] == 200


def _digest(*tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_four_variants_start_equal_and_see_the_same_batches(tmp_path, monkeypatch):
    import torch
    torch.set_num_threads(1)
    import dataset
    monkeypatch.setattr(dataset, "load_folders", dataset.load_folders)  # restored after the test
    make_dataset(tmp_path / "data" / "lift_block", n_episodes=3, T=30)  # the tiny preset's folder layout
    o = ablation.parse_options(["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--data-dir",
                                str(tmp_path / "data"), "--out", str(tmp_path / "res"), "--finetune-steps", "3"])
    jobs = {j.name: j for j in ablation.plan(o, tmp_path / "res", tmp_path / "runs", tmp_path / "data")}
    ablation.run_job(jobs["pretrain"], o, tmp_path / "res" / "runs")
    seen = {}
    make_opt, make_batch, noise = train.make_optimizer, dataset.make_batch, train.sample_noise_time

    def spy_opt(model, opts):  # called right after the weights are loaded from the base
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith(("stage_", "keyframe_"))}
        seen[opts.out]["init"] = _digest(*[sd[k] for k in sorted(sd)])
        return make_opt(model, opts)

    def spy_batch(*a, **kw):
        b = make_batch(*a, **kw)
        seen[current]["batches"].append(_digest(b["images"], b["actions"], b["state"], b["lang_ids"], b["stage"], b["keyframe"]))
        return b

    def spy_noise(*a, **kw):
        n, t = noise(*a, **kw)
        seen[current]["noise"].append(_digest(n, t))
        return n, t
    monkeypatch.setattr(train, "make_optimizer", spy_opt)
    monkeypatch.setattr(dataset, "make_batch", spy_batch)
    monkeypatch.setattr(train, "sample_noise_time", spy_noise)
    fts = [jobs[f"finetune__{ablation.wname(*w)}__s0"] for w in o.variants().values()]
    for job in fts:
        current = str(job.output.parent)
        seen[current] = {"batches": [], "noise": []}
        ablation.run_job(job, o, tmp_path / "res" / "runs")
    runs = list(seen.values())
    assert len(runs) == 4 and all(len(r["batches"]) == 3 for r in runs)
    assert all(r == runs[0] for r in runs[1:]), "variants differ in initial weights, batches or flow noise"
    # ... and their commands differ only in the loss weights and the output folder
    strip = lambda j: [a for i, a in enumerate(map(str, j.argv))  # noqa: E731
                       if i == 0 or str(j.argv[i - 1]) not in ("--stage-weight", "--keyframe-weight", "--out")]
    assert all(strip(j) == strip(fts[0]) for j in fts)
    assert {(j.argv[j.argv.index("--stage-weight") + 1], j.argv[j.argv.index("--keyframe-weight") + 1]) for j in fts} == \
        {(0.0, 0.0), (0.1, 0.0), (0.0, 0.1), (0.1, 0.1)}
    ck = [torch.load(j.output, weights_only=True) for j in fts]
    assert set(ck[0]["model"]) < set(ck[3]["model"]) and "stage_query" in ck[3]["model"]


def _results(folder: Path, outcomes: dict, task_events=None):
    import eval_sim
    tasks = {}
    for task, oc in outcomes.items():
        eps = [{"seed": 1_000_000 + i, "success": bool(x), "failure_type": "success" if x else "skill-fail",
                "failure_to_nearest_event": None if x else 2.0, "uniform_step_to_nearest_event": None if x else 8.0}
               for i, x in enumerate(oc)]
        tasks[task] = eval_sim.summarise(task, eps, 1.0)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"tasks": tasks}))
    return str(folder)


def test_compare_pools_seeds_with_spread_and_pairs_by_seed(tmp_path):
    import eval_sim
    none = [_results(tmp_path / f"none{s}", {"place_block": oc}) for s, oc in enumerate(([1, 0, 0, 0] * 5, [1, 1, 0, 0] * 5))]
    stake = [_results(tmp_path / f"stake{s}", {"place_block": oc}) for s, oc in enumerate(([1, 1, 0, 0] * 5, [1, 1, 1, 0] * 5))]
    base = _results(tmp_path / "base", {"place_block": [0] * 20})
    md = eval_sim.compare([none, stake, [base]], str(tmp_path / "rep"), ["none", "SS+KS", "base"])
    js = json.loads((tmp_path / "rep" / "compare.json").read_text())
    v = js["tasks"]["place_block"]["variants"]
    assert (v["none"]["successes"], v["none"]["episodes"], v["SS+KS"]["successes"]) == (15, 40, 25)
    assert v["none"]["seed_rates"] == [0.25, 0.5] and abs(v["none"]["seed_std"] - 0.1768) < 1e-3
    assert v["SS+KS"]["failure_types"]["skill-fail"] == 15
    p = js["paired"]["SS+KS"]["place_block"]
    assert (p["pairs"], p["b"], p["c"]) == (40, 0, 10) and abs(p["relative_gain"] - 2 / 3) < 1e-9
    assert js["paired"]["base"]["place_block"]["pairs"] == 20  # the one base folder against none's first seed only
    assert "Mean success rate over folders" in md and "0.38 ± 0.18 (0.25 - 0.50)" in md
    with pytest.raises(ValueError, match="cannot pair"):
        eval_sim.compare([none + [base], stake], str(tmp_path / "rep2"), ["none", "SS+KS"])
