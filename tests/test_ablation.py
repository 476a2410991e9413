"""lab/ablation.py: the protocol end to end on the tiny preset (the lift_block recipe, tiny numbers), stopping at
its budget, skipping finished runs, and the pairing of the four variants (same initial weights, same batches,
same flow noise); diagnostics.compare's seed-aware statistics on synthetic results."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests"))
import train  # noqa: E402,F401  at collection: importing timm/torchvision after a MuJoCo EGL context segfaults
from lab import ablation  # noqa: E402


def run(tmp, *args, check=True):
    cmd = [sys.executable, "lab/ablation.py", "--preset", "tiny", "--out", str(tmp / "res"), "--runs-dir",
           str(tmp / "runs"), "--data-dir", str(tmp / "data"), *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None


def mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_end_to_end_at_a_budget_then_everything_skipped(tmp_path):
    r, s = run(tmp_path, "--budget-min", "1e-6")  # the budget is spent after the first run: it stops there
    assert s["ran"] == 1 and s["stopped_at_budget"] and s["progress"]["data"] == "1/1"
    for _ in range(2):  # none_s0 trained, then evaluated: nothing to compare it with yet, which is no error
        r, s = run(tmp_path, "--budget-min", "1e-6")
    assert s["ran"] == 1 and not s["reported"] and s["progress"]["eval"] == "1/7" and "no report yet" in r.stdout
    r, s = run(tmp_path)
    assert s["ran"] == 12 and s["reported"] and s["progress"] == {"data": "1/1", "train": "7/7", "eval": "7/7"}
    res = tmp_path / "res"
    for f in ("report.md", "summary.json", "lift_block/compare.md", "lift_block/compare.json",
              "lift_block/gain_vs_events.png", "sweep/compare.md", "probe_lift_block.png"):
        assert (res / f).stat().st_size > 100, f
    for p in sorted((res / "runs").glob("*.json")):
        rec = json.loads(p.read_text())
        assert rec["command"].startswith("python ") and rec["git_revision"] and "wall_s" in rec, p
    rec = json.loads((res / "runs" / "train__lift_block__KS_s0.json").read_text())
    assert "--stage-weight 0.0 --keyframe-weight 0.1 --seed 0" in rec["command"] and "frontends/lift_block.pt" in rec["command"]
    summary = json.loads((res / "summary.json").read_text())
    task = summary["tasks"]["lift_block"]
    assert task["seeds"] == {"none": 2, "SS": 1, "KS": 1, "SS+KS": 2} and not summary["missing"]
    assert "seeds" in task["compare"]["paired"]["SS+KS"]["lift_block"]  # two seeds: the bootstrap and sign flips
    report = (res / "report.md").read_text()
    assert "Power of this design" in report and "with the training-seed spread" in report and "sweep" in report
    assert "![stage probe](probe_lift_block.png)" in report and "SS+KS_s0" in json.loads(
        (res / "probe_lift_block.json").read_text())["command"]

    before = mtimes(tmp_path)
    r, s = run(tmp_path)
    assert s["ran"] == 0 and not s["reported"] and "everything selected is done" in r.stdout
    assert mtimes(tmp_path) == before, "a second invocation must not touch anything"

    # a fresh clone has the records and evaluations, not the git-ignored checkpoints and demonstrations: nothing reruns
    (tmp_path / "runs").rename(tmp_path / "runs_away")
    (tmp_path / "data").rename(tmp_path / "data_away")
    r, s = run(tmp_path)
    assert s["ran"] == 0 and "everything selected is done" in r.stdout and not (tmp_path / "runs").exists()
    (tmp_path / "runs_away").rename(tmp_path / "runs")
    (tmp_path / "data_away").rename(tmp_path / "data")

    # a run whose record is lost is done again (train.py --resume continues its finished checkpoint)
    (res / "runs" / "train__lift_block__none_s0.json").unlink()
    r, s = run(tmp_path, "--only", "train")
    assert s["ran"] == 1 and "start step 2" in r.stdout

    # other options for a finished run: a clear error, nothing overwritten
    r, _ = run(tmp_path, "--steps", "3", check=False)
    assert r.returncode == 2 and "recorded for another command" in r.stderr


def test_options_errors():
    for argv, msg in ((["--tasks", "lift_blok"], "no recipe for"), (["--seeds", '{"none": 1, "SS+KS": 2, "SS": 1, "KS": 1}'],
                      "none needs the most seeds"), (["--sweep-task", "franka_pick_place"], "--sweep-task")):
        with pytest.raises(ValueError, match=msg):
            ablation.parse_options(["--preset", "tiny", *argv])


def test_shards_split_the_trainings_and_their_evaluations(tmp_path, capsys):
    """--shard K/N: N invocations side by side, each with every N-th training and its evaluation; the
    demonstrations come first (--only data), a shard does not make them."""
    base = ["--preset", "cpu", "--out", str(tmp_path / "res"), "--runs-dir", str(tmp_path / "runs"),
            "--data-dir", str(tmp_path / "data"), "--dry-run"]
    def commands(*argv):
        ablation.ablate(ablation.parse_options(base + list(argv)))
        return [l for l in capsys.readouterr().out.splitlines() if l.startswith("todo")]
    every = commands()
    assert ablation.protocol(ablation.parse_options(base + ["--shard", "1/3"])) == ablation.protocol(
        ablation.parse_options(base))  # a shard's report is the study's
    shards = [commands("--shard", f"{k}/3") for k in range(3)]
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
    assert sorted(sum(shards, [])) == sorted(l for l in every if "data.py" not in l)
    trains = [l for l in shards[1] if "train.py" in l]
    assert len(trains) >= 10 and all(f"{t.split('--out ')[1].split()[0]}/ckpt.pt" in e
                                      for t, e in zip(trains, [l for l in shards[1] if "eval" in l]))
    for argv in (["--shard", "3/3"], ["--shard", "1"]):
        with pytest.raises(ValueError, match="--shard must be K/N"):
            ablation.parse_options(base + argv)
    o = ablation.parse_options(base[:-1] + ["--shard", "0/2", "--tasks", "lift_block", "--sweep-task", "lift_block"])
    with pytest.raises(ablation.AblationError, match="--only data first"):
        ablation.ablate(o)


def _digest(*tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_four_variants_start_equal_and_see_the_same_batches(tmp_path, monkeypatch):
    import torch
    torch.set_num_threads(1)
    import dataset
    o = ablation.parse_options(["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--data-dir",
                                str(tmp_path / "data"), "--out", str(tmp_path / "res"), "--steps", "3"])
    jobs = {j.name: j for j in ablation.plan(o, tmp_path / "res", tmp_path / "runs", tmp_path / "data")}
    ablation.run_job(jobs["data__lift_block"], o, tmp_path / "res" / "runs")
    seen = {}
    make_opt, make_batch, noise = train.make_optimizer, dataset.make_batch, train.sample_noise_time

    def spy_opt(model, opts):  # called right after the weights are made
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith(("stage_", "keyframe_"))}
        seen[opts.out]["init"] = _digest(*[sd[k] for k in sorted(sd)])
        return make_opt(model, opts)

    def spy_batch(*a, **kw):
        b = make_batch(*a, **kw)
        seen[current]["batches"].append(_digest(b["ground"], b["actions"], b["state"], b["lang_ids"], b["stage"], b["keyframe"]))
        return b

    def spy_noise(*a, **kw):
        n, t = noise(*a, **kw)
        seen[current]["noise"].append(_digest(n, t))
        return n, t
    monkeypatch.setattr(train, "make_optimizer", spy_opt)
    monkeypatch.setattr(dataset, "make_batch", spy_batch)
    monkeypatch.setattr(train, "sample_noise_time", spy_noise)
    trains = [jobs[f"train__lift_block__{v}_s0"] for v in ablation.VARIANTS]
    for job in trains:
        current = str(job.output.parent)
        seen[current] = {"batches": [], "noise": []}
        ablation.run_job(job, o, tmp_path / "res" / "runs")
    runs = list(seen.values())
    assert len(runs) == 4 and all(len(r["batches"]) == 3 for r in runs)
    assert all(r == runs[0] for r in runs[1:]), "variants differ in initial weights, batches or flow noise"
    # ... and their commands differ only in the loss weights and the output folder
    strip = lambda j: [a for i, a in enumerate(map(str, j.argv))  # noqa: E731
                       if i == 0 or str(j.argv[i - 1]) not in ("--stage-weight", "--keyframe-weight", "--out")]
    assert all(strip(j) == strip(trains[0]) for j in trains)
    assert {(j.argv[j.argv.index("--stage-weight") + 1], j.argv[j.argv.index("--keyframe-weight") + 1]) for j in trains} == \
        {(0.0, 0.0), (0.1, 0.0), (0.0, 0.1), (0.1, 0.1)}
    ck = [torch.load(j.output, weights_only=True) for j in trains]
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
    from lab import diagnostics
    none = [_results(tmp_path / f"none{s}", {"place_block": oc}) for s, oc in enumerate(([1, 0, 0, 0] * 5, [1, 1, 0, 0] * 5))]
    stake = [_results(tmp_path / f"stake{s}", {"place_block": oc}) for s, oc in enumerate(([1, 1, 0, 0] * 5, [1, 1, 1, 0] * 5))]
    base = _results(tmp_path / "base", {"place_block": [0] * 20})
    md = diagnostics.compare([none, stake, [base]], str(tmp_path / "rep"), ["none", "SS+KS", "base"])
    js = json.loads((tmp_path / "rep" / "compare.json").read_text())
    v = js["tasks"]["place_block"]["variants"]
    assert (v["none"]["successes"], v["none"]["episodes"], v["SS+KS"]["successes"]) == (15, 40, 25)
    assert v["none"]["seed_rates"] == [0.25, 0.5] and abs(v["none"]["seed_std"] - 0.1768) < 1e-3
    assert v["SS+KS"]["failure_types"]["skill-fail"] == 15
    p = js["paired"]["SS+KS"]["place_block"]
    assert (p["pairs"], p["b"], p["c"]) == (40, 0, 10) and abs(p["relative_gain"] - 2 / 3) < 1e-9
    assert js["paired"]["base"]["place_block"]["pairs"] == 20  # the one base folder against none's first seed only
    assert "Mean success rate over folders" in md and "0.38 ± 0.18 (0.25 - 0.50)" in md
    assert p["seeds"]["bootstrap"]["seeds"] == 2 and p["seeds"]["p_sign_flip"] == 0.5  # both seeds gain: 2/2^2 * 2
    assert "with the training-seed spread" in md
    # more folders for one variant: the first min(count) pair, seed i with seed i
    diagnostics.compare([none + [base], stake], str(tmp_path / "rep2"), ["none", "SS+KS"])
    js2 = json.loads((tmp_path / "rep2" / "compare.json").read_text())
    p2 = js2["paired"]["SS+KS"]["place_block"]  # b, c and the gain over the same two pairs of folders
    assert p2["pairs"] == 40 and abs(p2["relative_gain"] - 2 / 3) < 1e-9


def test_headline_gains_by_events_on_synthetic_results(tmp_path):
    from lab import analysis, diagnostics
    per_task = {}
    # place_block (2 events): SS+KS 0.5 / 0.75 against none 0.25 / 0.5, a known +67%; handover (4): none never
    # succeeds, so it has no relative gain and is left out rather than shown as NaN
    for t, (none_oc, stake_oc) in {"place_block": (([1, 0, 0, 0] * 5, [1, 1, 0, 0] * 5), ([1, 1, 0, 0] * 5, [1, 1, 1, 0] * 5)),
                                   "handover": (([0] * 20, [0] * 20), ([1, 0] * 10, [0] * 20))}.items():
        dirs = [[_results(tmp_path / t / f"{v}{s}", {t: oc}) for s, oc in enumerate(ocs)]
                for v, ocs in (("none", none_oc), ("stake", stake_oc))]
        diagnostics.compare(dirs, str(tmp_path / t / "rep"), ["none", "SS+KS"])
        per_task[t] = {"compare": json.loads((tmp_path / t / "rep" / "compare.json").read_text())}
    gains, lines = analysis.headline_gains(per_task, tmp_path, ["SS", "KS", "SS+KS"])
    assert [(g["task"], g["events"], g["variant"], g["seeds"]) for g in gains] == [("place_block", 2, "SS+KS", 2)]
    g = gains[0]
    assert abs(g["gain"] - 2 / 3) < 1e-9 and g["gain95"][0] > 0 and g["p_sign_flip"] == 0.5
    # both seeds' differences are +0.25: no spread, so no t interval and no p (t), not a zero-width one and p 0
    assert "| place_block | 2 | SS+KS | 2 | +66.7% [no spread: every seed's difference equal] | +0.250 [no spread" \
        in "\n".join(lines) and "equal] | - | 0.5; 0.5 |" in "\n".join(lines)
    assert "| SS+KS | 1 | +66.7% [no spread: every seed's difference equal] | 1.0 | - |" in lines
    assert (tmp_path / "gain_vs_events.png").is_file() and "![gain vs events](gain_vs_events.png)" in lines


def test_the_report_pairs_seeds_by_number_and_waits_for_a_gap(tmp_path):
    """none has seeds 0-3 evaluated, SS+KS 0, 1 and 3: seed 3 of SS+KS must not pair with seed 2 of none."""
    o = ablation.parse_options(["--preset", "tiny", "--out", str(tmp_path / "res"), "--runs-dir", str(tmp_path / "runs"),
                                "--data-dir", str(tmp_path / "data"), "--only", "report",
                                "--seeds", '{"none": 4, "SS+KS": 4, "SS": 1, "KS": 1}'])
    jobs = ablation.plan(o, tmp_path / "res", tmp_path / "runs", tmp_path / "data")
    records = tmp_path / "res" / "runs"
    records.mkdir(parents=True)
    outcomes = {"none_s0": [1, 0, 0, 0], "none_s1": [1, 1, 0, 0], "none_s2": [0, 0, 0, 0], "none_s3": [1, 1, 1, 0],
                "SS+KS_s0": [1, 1, 0, 0], "SS+KS_s1": [1, 1, 1, 0], "SS+KS_s3": [1, 1, 1, 1]}
    for j in jobs:
        if j.stage == "eval" and j.name.split("__")[-1] in outcomes:
            _results(j.output.parent, {"lift_block": outcomes[j.name.split("__")[-1]] * 5})
            (records / f"{j.name}.json").write_text(json.dumps({"config": j.config(), "command": j.command,
                                                                "name": j.name, "stage": j.stage, "wall_s": 1.0}))
    s = ablation.ablate(o)
    gains = json.loads((tmp_path / "res" / "summary.json").read_text())["gains"]
    g = next(g for g in gains if g["variant"] == "SS+KS")
    assert s["reported"] and g["seeds"] == 2 and g["none_rates"] == [0.25, 0.5] and g["other_rates"] == [0.5, 0.75]
    # the primary interval's coverage at the design's own seed count (2) beside the standing 3, 5 and 12
    cov = json.loads((tmp_path / "res" / "summary.json").read_text())["coverage_primary"]["table"]
    assert list(cov) == ["2 seeds", "3 seeds", "5 seeds", "12 seeds"] and 0.93 <= cov["2 seeds"]["0"] <= 0.97
