"""The pilot of the pixels design, before its study is paid for (docs/pixels.md):

    python lab/ablation.py --preset pixels-cpu --only pilot      # rerun until it prints the criteria

lab/ablation.py runs its jobs (pilot_plan): per task the study's demonstrations and SS+KS seed 0 training (its
checkpoint and record are the study's own), and an evaluation of that policy on the first EPISODES held-out
episodes (OUT/pilot/TASK/eval). This module then probes the policy's stage head along the first rollout of
evaluation blocks 0 .. ROLLOUTS - 1 (lab/diagnostics.py probe; OUT/pilot/TASK/probe_seedS.*), checks the three
criteria of the issue, prints each as pass / FAIL and writes OUT/pilot.json:

  base success      the evaluation's success rate lies in SUCCESS
  stage agreement   the stage head's p(skill) > 0.5 matches the rollout's own commanded gripper stage at >= AGREEMENT
                    of the probed steps, pooled over the rollouts, which must hold a gripper event (a rollout that
                    never closes agrees with a head that never says "skill")
  stage loss        not collapsed early: at the first metrics.jsonl line at or past LOSS_AT of training, the stage
                    loss (BCE) is >= LOSS_FLOOR, i.e. below p = 0.999 on the true stage on average. The frozen
                    design's recipes fail it where the issue saw the state shortcut (lift_block 4.8e-4, lift_bar
                    1.6e-4 at step 1500 of 3000) and pass it elsewhere (handover 5.9e-3, franka_pick_place 0.043
                    at 3000 of 6000); at 10% of training all four were above 0.03, so that point tells nothing
                    (results/recipes/*/train_metrics.jsonl)

A failing criterion asks for another recipe (steps, cameras, image size, tasks: lab/ablation.py PIXELS), not
another criterion.
"""
from __future__ import annotations

import json
from pathlib import Path

import data

EPISODES, ROLLOUTS = 100, 5
SUCCESS, AGREEMENT = (0.3, 0.9), 0.9
LOSS_AT, LOSS_FLOOR = 0.5, 1e-3
ANALYSIS = ["pilot-v1", SUCCESS, AGREEMENT, LOSS_AT, LOSS_FLOOR]  # a change here makes pilot.json again


def criteria(success_rate: float, agreement: float, events: int, metrics: list, steps: int) -> dict:
    """The three criteria from the evaluation's success rate, the probes' pooled stage agreement and their
    gripper events, and the training's metrics.jsonl lines (dicts) of its `steps` steps."""
    at = next((m for m in metrics if m["step"] >= LOSS_AT * steps and "stage_loss" in m), None)
    lo, hi = SUCCESS
    return {"base_success": dict(value=success_rate, range=[lo, hi], ok=lo <= success_rate <= hi),
            "stage_agreement": dict(value=agreement, floor=AGREEMENT, events=events,
                                    ok=agreement >= AGREEMENT and events > 0),
            "stage_loss": dict(step=at and at["step"], value=at and at["stage_loss"], floor=LOSS_FLOOR,
                               ok=at is not None and at["stage_loss"] >= LOSS_FLOOR)}


def report(evals: list, out: Path, device: str, key: dict) -> dict:
    """OUT/pilot.json from the finished pilot evaluations (lab/ablation.py Jobs; each needs its training), made
    again only where `key` (the protocol and the evaluations' digests) or ANALYSIS changed. Probes are kept, and so
    is a task's entry (OUT/pilot/TASK/criteria.json) while its commands, evaluation and ANALYSIS are the same: a
    fresh clone lacks the trainings' metrics.jsonl."""
    from lab.diagnostics import probe
    path = out / "pilot.json"
    was = json.loads(path.read_text()) if path.is_file() else {}
    if was and all(was.get(k) == json.loads(json.dumps(v)) for k, v in {**key, "analysis": ANALYSIS}.items()):
        return was
    tasks = {}
    for ev in evals:
        t, train = ev.name.split("__")[1], ev.needs[0]
        kept = out / "pilot" / t / "criteria.json"
        same = dict(analysis=ANALYSIS, train=train.command, eval=ev.command, eval_digest=key["inputs"].get(ev.name))
        was_t = json.loads(kept.read_text()) if kept.is_file() else {}
        if was_t.get("key") == json.loads(json.dumps(same)):
            tasks[t] = was_t["task"]
            continue
        probes = []
        for s in range(ROLLOUTS):
            made = out / "pilot" / t / f"probe_seed{s}.json"   # written after its plot: a killed probe is redone
            if not made.is_file():
                png = made.with_suffix(".png")
                cmd = f"python lab/diagnostics.py probe --ckpt {train.output} --task {t} --seed {s} --out {png}"
                res = dict(command=cmd) | probe(str(train.output), t, s, str(png), device)
                data.atomic_write_bytes(made, lambda f: f.write(json.dumps(res, indent=1).encode()))
            probes.append(json.loads(made.read_text()))
        agreement = sum(p["stage_agreement"] * p["steps"] for p in probes) / sum(p["steps"] for p in probes)
        events = sum(len(p["events"]) for p in probes)
        metrics = [json.loads(l) for l in (train.output.parent / "metrics.jsonl").read_text().splitlines() if l.strip()]
        rate = json.loads(ev.output.read_text())["tasks"][t]["success_rate"]
        tasks[t] = dict(criteria=criteria(rate, agreement, events, metrics, metrics[-1]["step"]), train=train.command,
                        eval=ev.command, probes=[p["command"] for p in probes], probe_success=[p["success"] for p in probes])
        data.atomic_write_bytes(kept, lambda f: f.write(json.dumps(dict(key=same, task=tasks[t]), indent=1).encode()))
    res = dict(key, analysis=ANALYSIS, git_revision=data.git_revision(), tasks=tasks,  # key["pending"]: tasks to come
               all_pass=not key.get("pending") and all(c["ok"] for t in tasks.values() for c in t["criteria"].values()))
    data.atomic_write_bytes(path, lambda f: f.write(json.dumps(res, indent=1, default=str).encode()))
    return res


def show(res: dict) -> None:
    """Each criterion of pilot.json, pass or FAIL."""
    for t, r in res["tasks"].items():
        for name, c in r["criteria"].items():
            need = f"in {c['range']}" if "range" in c else f">= {c['floor']:g}" + (
                f", over rollouts with {c['events']} gripper events (> 0)" if "events" in c else "")
            at = f" at step {c['step']}" if "step" in c else ""
            value = "none" if c["value"] is None else f"{c['value']:.3g}"
            print(f"pilot {t}: {name} {value}{at} (needs {need}): {'pass' if c['ok'] else 'FAIL'}")
    if res.get("pending"):
        print(f"pilot: still to run: {', '.join(res['pending'])}")
    print("pilot: " + ("every criterion passes" if res["all_pass"] else
                       "not every task has run yet" if res.get("pending") else
                       "a criterion fails: change the recipe (steps, cameras, image size, tasks), not the criterion"))
