"""The paper's setting as a design of lab/ablation.py (docs/pixels.md): the pixels presets' commands, a tiny pixels
training (front end unfrozen at its own rate, the state in the expert), a training run in pieces across
invocations, and the pilot's criteria and report (lab/pilot.py) on hand-made inputs."""
import dataclasses
import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests"))
import train  # noqa: E402  at collection: importing timm/torchvision after a MuJoCo EGL context segfaults
from lab import ablation, pilot  # noqa: E402
from model import VISION_PREFIXES  # noqa: E402


def options(tmp, preset, *argv):
    o = ablation.parse_options(["--preset", preset, "--out", str(tmp / "res"), "--runs-dir", str(tmp / "runs"),
                                "--data-dir", str(tmp / "data"), *argv])
    return o, {j.name: j for j in ablation.plan(o, tmp / "res", tmp / "runs", tmp / "data")}


def flag(job, name):
    a = list(map(str, job.argv))
    return a[a.index(name) + 1] if name in a else None


def test_pixels_presets_plan_the_papers_setting(tmp_path):
    o, jobs = options(tmp_path, "pixels-cpu")
    trains = [j for j in jobs.values() if j.stage == "train"]
    for j in trains:
        a = list(map(str, j.argv))
        assert flag(j, "--state-in") == "expert" and flag(j, "--vision-lr-scale") == "0.1" and flag(j, "--shift") == "4"
        assert not {"--freeze-vision", "--grounded-only", "--symmetry"} & set(a) and "--grounded" in a, j.command
    count = lambda t, v: sum(n.startswith(f"train__{t}__{v}_s") for n in jobs)  # noqa: E731
    first, second = o.tasks
    assert [count(first, v) for v in ("none", "SS+KS", "SS", "KS")] == [10, 10, 5, 5]
    assert [count(second, v) for v in ("none", "SS+KS", "SS", "KS")] == [10, 10, 0, 0]
    evals = [j for j in jobs.values() if j.stage == "eval"]
    assert {(flag(j, "--episodes"), flag(j, "--seed")) for j in evals} == {("200", "0")}
    # --task-steps in place of the recipe's steps (handover: its pilot at 6000 failed), the others the recipe's
    steps = lambda j: [a for a, b in zip(map(str, j.argv[1:]), map(str, j.argv)) if b == "--steps"]  # noqa: E731
    assert steps(jobs["train__handover__none_s0"]) == ["12000"]
    assert steps(jobs["train__franka_pick_place__none_s0"]) == ["6000"]
    assert steps(options(tmp_path, "pixels-cpu", "--steps", "7")[1]["train__handover__none_s0"]) == ["7"]
    # the gpu preset: the same runs, on the GPU
    _, gpu = options(tmp_path, "pixels-gpu")
    strip = lambda j: [a for a in map(str, j.argv) if a not in ("cpu", "cuda", "2", "14")]  # noqa: E731
    assert gpu.keys() == jobs.keys() and all(strip(gpu[n]) == strip(jobs[n]) for n in jobs)
    assert {flag(j, "--device") for j in gpu.values() if j.stage == "train"} == {"cuda"}
    # the frozen design keeps the recipe's flags (its records stay valid)
    _, frozen = options(tmp_path, "cpu")
    j = frozen["train__handover__SS+KS_s0"]
    assert "--freeze-vision" in map(str, j.argv) and flag(j, "--state-in") is None and flag(j, "--shift") == "0"
    # the pilot: the study's SS+KS seed 0 training and an evaluation of its own
    pilot_jobs = ablation.pilot_plan(o, tmp_path / "res", tmp_path / "runs", tmp_path / "data")
    names = [j.name for j in pilot_jobs]
    assert [n for n in names if n.startswith("train")] == [f"train__{t}__SS+KS_s0" for t in o.tasks]
    assert {flag(j, "--episodes") for j in pilot_jobs if j.stage == "eval"} == {str(pilot.EPISODES)}


def test_a_tiny_pixels_training_unfreezes_the_front_end_at_its_rate(tmp_path):
    torch.set_num_threads(1)
    o, jobs = options(tmp_path, "pixels-tiny")
    records = tmp_path / "res" / "runs"
    ablation.run_job(jobs["data__lift_block"], o, records)
    job = jobs["train__lift_block__SS+KS_s0"]
    ablation.run_job(job, o, records)
    ck = torch.load(job.output, weights_only=True)
    mc = ck["model_config"]
    assert mc["state_in"] == "expert" and mc["grounded"] and not mc["grounded_only"] and mc["keypoints"]
    groups = ck["optimizer"]["param_groups"]
    lr = {g["lr_scale"]: g["lr"] for g in groups}
    assert set(lr) == {1.0, 0.1} and lr[0.1] == pytest.approx(0.1 * lr[1.0])
    n_vision = sum(len(g["params"]) for g in groups if g["lr_scale"] == 0.1)
    assert n_vision == sum(n.startswith(VISION_PREFIXES) for n in ck["model"]) > 0
    front = torch.load(ROOT / "frontends" / "lift_block.pt", weights_only=True)["vision"]
    moved = [n for n in front if n in ck["model"] and not torch.equal(front[n].float(), ck["model"][n].float())]
    assert any(n.startswith("vit.blocks") for n in moved), "the front end did not train"


def test_a_training_longer_than_the_budget_resumes_across_invocations(tmp_path, monkeypatch, capsys):
    """The budget's stop is Ctrl-C (stop_at): faked here at step 3 of 6, so the piece ends at a known step."""
    torch.set_num_threads(1)
    argv = ["--steps", "6", "--seeds", '{"none": 1, "SS+KS": 1, "SS": 1, "KS": 1}', "--sweep", "[]", "--budget-min", "5"]
    o, jobs = options(tmp_path, "tiny", *argv)
    records = tmp_path / "res" / "runs"
    ablation.run_job(jobs["data__lift_block"], o, records)
    step = train.train_step

    def stop_at_step_3(model, optimizer, *a):
        out = step(model, optimizer, *a)
        if optimizer.state[next(iter(optimizer.state))]["step"] == 3:
            signal.raise_signal(signal.SIGINT)   # what stop_at's timer sends
        return out

    monkeypatch.setattr(train, "train_step", stop_at_step_3)
    monkeypatch.setattr(ablation, "stop_at", lambda deadline: ablation.contextlib.nullcontext(lambda: True))
    s = ablation.ablate(o)
    first = jobs["train__lift_block__none_s0"]
    assert s["stopped_at_budget"] and s["ran"] == 0 and not (records / f"{first.name}.json").exists()
    assert torch.load(first.output, weights_only=True)["step"] == 3
    assert "everything selected is done" not in capsys.readouterr().out
    monkeypatch.undo()
    s = ablation.ablate(ablation.parse_options(["--preset", "tiny", "--out", str(tmp_path / "res"), "--runs-dir",
                                                str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
                                                "--only", "train", *argv]))
    assert s["ran"] == 4 and "start step 3" in capsys.readouterr().out
    assert json.loads((records / f"{first.name}.json").read_text())["stage"] == "train"
    assert torch.load(first.output, weights_only=True)["step"] == 6


def test_stop_at_sends_ctrl_c_at_its_deadline():
    import time
    with pytest.raises(KeyboardInterrupt):
        with ablation.stop_at(time.time() + 0.05) as fired:
            time.sleep(30)
    assert fired()
    with ablation.stop_at(time.time() + 30) as fired:  # cleared on the way out: nothing fires later
        pass
    time.sleep(0.01)
    assert not fired() and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def lines(*pairs):
    return [{"step": s, "stage_loss": v} for s, v in pairs]


def test_pilot_criteria():
    ok = pilot.criteria(0.55, 0.93, 4, lines((100, 0.3), (500, 0.01), (1000, 0.004)), 1000)
    assert all(c["ok"] for c in ok.values()) and ok["stage_loss"]["step"] == 500
    for rate in (0.29, 0.91):
        assert not pilot.criteria(rate, 0.93, 4, lines((500, 0.01)), 1000)["base_success"]["ok"]
    assert pilot.criteria(0.3, 0.9, 4, lines((500, 1e-3)), 1000)["stage_agreement"]["ok"]
    assert not pilot.criteria(0.5, 0.89, 4, lines((500, 0.01)), 1000)["stage_agreement"]["ok"]
    assert not pilot.criteria(0.5, 0.99, 0, lines((500, 0.01)), 1000)["stage_agreement"]["ok"]  # never closed
    collapsed = pilot.criteria(0.5, 0.95, 4, lines((100, 0.3), (500, 4.8e-4), (1000, 1e-5)), 1000)["stage_loss"]
    assert not collapsed["ok"] and collapsed["value"] == 4.8e-4
    assert not pilot.criteria(0.5, 0.95, 4, [{"step": 500, "policy_loss": 1.0}], 1000)["stage_loss"]["ok"]


def test_pilot_report_on_hand_made_runs(tmp_path, monkeypatch, capsys):
    o, _ = options(tmp_path, "pixels-tiny")
    jobs = ablation.pilot_plan(o, tmp_path / "res", tmp_path / "runs", tmp_path / "data")
    records = tmp_path / "res" / "runs"
    records.mkdir(parents=True)
    for j in jobs:  # the runs as if done
        j.output.parent.mkdir(parents=True, exist_ok=True)
        if j.stage == "eval":
            j.output.write_text(json.dumps({"tasks": {"lift_block": {"success_rate": 0.6}}}))
        else:
            j.output.write_text("x")
        if j.stage == "train":
            (j.output.parent / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines((1, 0.5), (2, 0.02)))) + "\n")
        (records / f"{j.name}.json").write_text(json.dumps({"config": j.config(), "command": j.command}))
    calls = []
    monkeypatch.setattr("lab.diagnostics.probe", lambda ckpt, t, s, out, device: calls.append(s) or
                        {"steps": 100, "success": True, "stage_agreement": 0.95 if s else 0.75, "keyframe_l1_mean": 0.1,
                         "events": [[40, 0, "close"], [80, 0, "open"]]})
    s = ablation.ablate(dataclasses.replace(o, only="pilot"))
    res = json.loads((tmp_path / "res" / "pilot.json").read_text())
    c = res["tasks"]["lift_block"]["criteria"]
    assert calls == list(range(pilot.ROLLOUTS)) and s["reported"]
    assert c["stage_agreement"]["value"] == pytest.approx((0.75 + 0.95 * 4) / 5) and c["stage_agreement"]["ok"]
    assert c["base_success"]["ok"] and c["stage_loss"]["ok"] and res["all_pass"]
    out = capsys.readouterr().out
    assert "pilot lift_block: base_success 0.6 (needs in [0.3, 0.9]): pass" in out
    for j in jobs:  # a fresh clone: the records and evaluations, not the git-ignored checkpoints and metrics
        if j.stage == "train":
            j.output.unlink(), (j.output.parent / "metrics.jsonl").unlink()
    s = ablation.ablate(dataclasses.replace(o, only="pilot"))  # a second invocation: all done
    assert len(calls) == pilot.ROLLOUTS and not s["reported"]
    assert "everything selected is done" in capsys.readouterr().out
    # the protocol changed elsewhere (more seeds): pilot.json made again, the task's entry kept without its metrics
    s = ablation.ablate(dataclasses.replace(o, only="pilot", seeds={**o.seeds, "none": 2}))
    assert s["reported"] and len(calls) == pilot.ROLLOUTS
    assert json.loads((tmp_path / "res" / "pilot.json").read_text())["tasks"] == res["tasks"]
    # another evaluation (its digest): the task's criteria are made again, from its success rate
    ev = next(j for j in jobs if j.stage == "eval")
    ev.output.write_text(json.dumps({"tasks": {"lift_block": {"success_rate": 0.2}}}))
    train_job = next(j for j in jobs if j.stage == "train")
    (train_job.output.parent / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines((1, 0.5), (2, 0.02)))) + "\n")
    s = ablation.ablate(dataclasses.replace(o, only="pilot"))
    res = json.loads((tmp_path / "res" / "pilot.json").read_text())
    assert not res["tasks"]["lift_block"]["criteria"]["base_success"]["ok"] and not res["all_pass"]


def test_the_pilot_runs_task_by_task_and_reports_each_task_when_it_is_done(tmp_path, monkeypatch, capsys):
    o, _ = options(tmp_path, "pixels-tiny")
    o = dataclasses.replace(o, tasks=["lift_block", "lift_bar"])
    jobs = ablation.pilot_plan(o, tmp_path / "res", tmp_path / "runs", tmp_path / "data")
    assert [j.name for j in jobs] == [f"{s}__{t}" + ("__SS+KS_s0" if s == "train" else "") for t in o.tasks
                                      for s in ("data", "train", "pilot_eval")]
    records = tmp_path / "res" / "runs"
    records.mkdir(parents=True)
    for j in jobs[:3]:  # lift_block done, lift_bar not started
        j.output.parent.mkdir(parents=True, exist_ok=True)
        j.output.write_text(json.dumps({"tasks": {"lift_block": {"success_rate": 0.6}}}) if j.stage == "eval" else "x")
        if j.stage == "train":
            (j.output.parent / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines((1, 0.5), (2, 0.02)))) + "\n")
        (records / f"{j.name}.json").write_text(json.dumps({"config": j.config(), "command": j.command}))
    monkeypatch.setattr("lab.diagnostics.probe", lambda ckpt, t, s, out, device:
                        {"steps": 100, "success": True, "stage_agreement": 0.95, "keyframe_l1_mean": 0.1,
                         "events": [[40, 0, "close"]]})
    monkeypatch.setattr(ablation, "run_job", lambda *a, **k: None)  # lift_bar's runs stop at the budget at once
    ablation.ablate(dataclasses.replace(o, only="pilot", budget_min=1.0))
    res = json.loads((tmp_path / "res" / "pilot.json").read_text())
    assert list(res["tasks"]) == ["lift_block"] and res["pending"] == ["lift_bar"] and not res["all_pass"]
    assert "pilot: still to run: lift_bar" in capsys.readouterr().out


def test_pixels_design_drops_the_frozen_front_ends_switches(tmp_path):
    """A recipe trained on a frozen front end's cached (or simulator) positions becomes the pixels design's run:
    the switches that need the frozen cache leave with it, so train.py accepts the command."""
    from lab.recipe import RECIPES
    o, _ = options(tmp_path, "pixels-cpu")
    for t in ("place_block", "place_block_recovery"):
        a = list(map(str, ablation.train_flags(o, RECIPES[t].train)))
        assert "--positions" in RECIPES[t].train and not {"--positions", "--freeze-vision", "--grounded-only"} & set(a)
