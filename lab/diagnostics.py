"""Diagnostics on top of the pipeline: comparisons, the StaKe probe, open-loop checks, the experts' success (moved
from eval_sim.py and data.py; the evaluation itself stays in eval_sim.py, the benchmarks are lab/bench.py).

  python lab/diagnostics.py compare DIR [DIR ...] --out REPORT_DIR      # markdown table + PNG charts + paired test
  python lab/diagnostics.py compare none=D1,D2 stake=D3,D4 --out R      # several training seeds per variant
  python lab/diagnostics.py probe --ckpt RUN/ckpt.pt --task T --out probe.png   # StaKe heads along a rollout
  python lab/diagnostics.py openloop --ckpt RUN/ckpt.pt --data DIR       # chunk error on demonstrations, by step and phase
  python lab/diagnostics.py true-positions --ckpt RUN/ckpt.pt --task T   # the same seeds with the simulator's positions
  python lab/diagnostics.py experts [--seeds 100] [--tasks T ...] [--out results/experts.json]   # expert success per task
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""): sys.path[0] = str(Path(__file__).resolve().parents[1])   # python lab/diagnostics.py

import numpy as np  # noqa: E402

import data  # noqa: E402
import segment  # noqa: E402
import stats  # noqa: E402
from eval_sim import EvalConfig, eval_seeds, gripper_events, rollout_batch  # noqa: E402
from stats import mcnemar_exact, wilson  # noqa: E402
from world import sim  # noqa: E402


# ============================================================================ compare

def paired(base_eps: list, other_eps: list):
    """Match episodes by seed; returns (n pairs, b, c, p-value)."""
    a = {e["seed"]: e["success"] for e in base_eps}
    o = {e["seed"]: e["success"] for e in other_eps}
    common = sorted(set(a) & set(o))
    b = sum(a[s] and not o[s] for s in common)
    c = sum(o[s] and not a[s] for s in common)
    return len(common), b, c, mcnemar_exact(b, c)


def _pool(task: str, res: list) -> dict:
    """One variant's results on a task, pooled over its folders (training seeds or evaluation seed blocks)."""
    xs = [r["tasks"][task] for r in res]
    k, n = sum(x["successes"] for x in xs), sum(x["episodes"] for x in xs)
    rates = [x["success_rate"] for x in xs]
    fails = [e for x in xs for e in x["per_episode"] if not e["success"]]
    mean = lambda key: float(np.mean(v)) if (v := [e[key] for e in fails if e.get(key) is not None]) else None  # noqa: E731
    return {"successes": k, "episodes": n, "success_rate": k / max(n, 1), "wilson95": list(wilson(k, n)),
            "seed_rates": rates, "seed_mean": float(np.mean(rates)), "seed_std": float(np.std(rates, ddof=1)) if len(rates) > 1 else 0.0,
            "failure_types": {t: sum(x["failure_types"][t] for x in xs) for t in ("motion-fail", "skill-fail", "timeout")},
            "failure_to_nearest_event_mean": mean("failure_to_nearest_event"),
            "uniform_step_to_nearest_event_mean": mean("uniform_step_to_nearest_event")}


def compare(dirs: list, out: str, labels: list | None = None) -> str:
    """Markdown table, compare.json and charts for several variants; the first is the baseline of the paired test.

    Each entry of `dirs` is one evaluation folder or a list of folders (one per training seed of that variant,
    or one per evaluation seed block of one policy).
    Rates and failure counts are pooled over a variant's folders, with the mean and spread over seeds beside
    them. The paired test matches folder i of the variant with folder i of the baseline for the first
    min(count) folders (training seed i of both; a single-folder variant, such as a base policy, with the
    baseline's first folder only, so that no episode counts twice), and episodes within a pair of folders by
    evaluation seed. With two or more such pairs the gain also gets stats.compare_variants: a hierarchical
    bootstrap interval (training seeds, then episodes) and the sign-flip test across seeds."""
    import plots
    groups = [[str(d)] if isinstance(d, (str, Path)) else [str(x) for x in d] for d in dirs]
    runs = []
    for g in groups:
        if not g:
            raise ValueError("compare: a variant has no evaluation folder")
        for d in g:
            if not (Path(d) / "results.json").is_file():
                raise ValueError(f"{Path(d) / 'results.json'}: missing (run eval_sim.py --out {d} first)")
        runs.append([json.loads((Path(d) / "results.json").read_text()) for d in g])
    labels = labels or [Path(g[0]).name for g in groups]
    if len(labels) != len(runs):
        raise ValueError(f"compare: {len(labels)} labels for {len(runs)} variants")
    tasks = [t for t in runs[0][0]["tasks"] if all(t in r["tasks"] for res in runs for r in res)]
    if not tasks:
        raise ValueError("the evaluation folders share no task")
    events = {t: runs[0][0]["tasks"][t]["gripper_events"] for t in tasks}
    tasks.sort(key=lambda t: (events[t], t))
    pooled = {t: [_pool(t, res) for res in runs] for t in tasks}
    multi = any(len(g) > 1 for g in groups)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    head = "| task | events | " + " | ".join(labels) + " |"
    rule = "|" + "---|" * (2 + len(labels))
    row = lambda t, cells: f"| {t} | {events[t]} | " + " | ".join(cells) + " |"  # noqa: E731
    lines = ["Success rate [Wilson 95% interval] (successes / episodes)" + (
        ", pooled over each variant's folders (training seeds or evaluation seed blocks; folders per variant: " + ", ".join(f"{l} {len(g)}" for l, g in zip(labels, groups)) + ")"
        if multi else "") + ".", "", head, rule]
    for t in tasks:
        lines.append(row(t, [f"{x['success_rate']:.2f} [{x['wilson95'][0]:.2f}, {x['wilson95'][1]:.2f}] "
                             f"({x['successes']}/{x['episodes']})" for x in pooled[t]]))
    if multi:
        lines += ["", "Mean success rate over folders ± standard deviation (min - max):", "", head, rule]
        for t in tasks:
            lines.append(row(t, [f"{x['seed_mean']:.2f} ± {x['seed_std']:.2f} ({min(x['seed_rates']):.2f} - "
                                 f"{max(x['seed_rates']):.2f})" for x in pooled[t]]))
    points, paired_json, seeded = [], {}, {}
    if len(runs) > 1:
        lines += ["", f"Paired test against **{labels[0]}** (same evaluation seeds" + (
                  "; folder i against the baseline's folder i, a single-folder variant against the first only" if multi else "") + "): exact McNemar on discordant episodes (b = baseline succeeds only, c = variant succeeds only). "
                  "Relative gain = (variant - baseline) / baseline, both over the paired folders; 'inconclusive' where the baseline is within 0.1 of floor or ceiling.", "",
                  "| task | variant | pairs | b | c | p | relative gain |", "|---|---|---|---|---|---|---|"]
        for vi, (lab, res) in enumerate(zip(labels[1:], runs[1:]), start=1):
            m = min(len(runs[0]), len(res))
            B = C = N = 0
            paired_json[lab] = {}
            for t in tasks:
                n = b = c = 0
                for i in range(m):
                    ni, bi, ci, _ = paired(runs[0][i]["tasks"][t]["per_episode"], res[i]["tasks"][t]["per_episode"])
                    n, b, c = n + ni, b + bi, c + ci
                N, B, C, p = N + n, B + b, C + c, mcnemar_exact(b, c)
                base, var = (_pool(t, rs[:m])["success_rate"] for rs in (runs[0], res))  # the paired folders, as b and c
                gain = None if base < 0.1 or base > 0.9 else (var - base) / base
                if m > 1 and (X := seed_matrices(runs[0][:m], res[:m], t)) is not None:
                    seeded[(t, lab)] = stats.compare_variants(*X)
                whisker = seeded[(t, lab)]["bootstrap"]["gain95"] if (t, lab) in seeded else ()
                if gain is not None:
                    points.append((events[t], gain, f"{lab}:{t}", vi, *whisker))
                paired_json[lab][t] = {"pairs": n, "b": b, "c": c, "p": p, "relative_gain": gain,
                                       **({"seeds": seeded[(t, lab)]} if (t, lab) in seeded else {})}
                lines.append(f"| {t} | {lab} | {n} | {b} | {c} | {p:.3g} | {'inconclusive' if gain is None else f'{gain:+.2f}'} |")
            paired_json[lab]["all tasks"] = {"pairs": N, "b": B, "c": C, "p": mcnemar_exact(B, C)}
            lines.append(f"| all tasks | {lab} | {N} | {B} | {C} | {mcnemar_exact(B, C):.3g} | |")
    if seeded:
        lines += ["", f"Gain over **{labels[0]}** with the training-seed spread (stats.py): seed i of a variant against "
                  f"seed i of {labels[0]}, on the evaluation seeds all of them share. Interval: hierarchical bootstrap "
                  "(seeds, then episodes), 95%. Sign flip: exact test on the per-seed differences (its floor is "
                  "2/2^seeds). McNemar pooled: the discordant episodes of all seeds (blind to the seed spread).", "",
                  "| task | variant | seeds x episodes | difference [95%] | relative gain [95%] | p sign flip | p bootstrap | p McNemar pooled |",
                  "|---|---|---|---|---|---|---|---|"]
        for (t, lab), r in seeded.items():
            bs = r["bootstrap"]
            lines.append(f"| {t} | {lab} | {bs['seeds']} x {bs['episodes']} | {bs['diff']:+.3f} [{bs['diff95'][0]:+.3f}, "
                         f"{bs['diff95'][1]:+.3f}] | {bs['gain']:+.2f} [{bs['gain95'][0]:+.2f}, {bs['gain95'][1]:+.2f}] | "
                         f"{r['p_sign_flip']:.3g} | {bs['p_boot']:.3g} | {r['pooled_mcnemar']['p']:.3g} |")
    lines += ["", "Failure types (motion-fail / skill-fail / timeout" + (", summed over folders" if multi else "") + "):", "", head, rule]
    for t in tasks:
        lines.append(row(t, ["/".join(str(x["failure_types"][k]) for k in ("motion-fail", "skill-fail", "timeout")) for x in pooled[t]]))
    lines += ["", "Failure step to the rollout's nearest gripper event, mean steps (a uniformly drawn step of the same rollouts in brackets):", "",
              head, rule]
    for t in tasks:
        lines.append(row(t, ["n/a" if x["failure_to_nearest_event_mean"] is None else
                             f"{x['failure_to_nearest_event_mean']:.1f} ({x['uniform_step_to_nearest_event_mean']:.1f})" for x in pooled[t]]))
    md = "\n".join(lines) + "\n"
    summary = {"command": "python " + " ".join(sys.argv), "git_revision": data.git_revision(),
               "labels": labels, "folders": dict(zip(labels, groups)), "baseline": labels[0], "paired": paired_json,
               "tasks": {t: {"gripper_events": events[t], "variants": dict(zip(labels, pooled[t]))} for t in tasks}}
    data.atomic_write_bytes(outp / "compare.md", lambda f: f.write(md.encode()))
    data.atomic_write_bytes(outp / "compare.json", lambda f: f.write(json.dumps(summary, indent=1).encode()))
    plots.bar_chart(outp / "success.png", tasks, labels, [[x["success_rate"] for x in pooled[t]] for t in tasks],
              [[x["wilson95"][0] for x in pooled[t]] for t in tasks], [[x["wilson95"][1] for x in pooled[t]] for t in tasks],
              "success rate per task (Wilson 95% whiskers)")
    if len(runs) > 1:
        plots.scatter_chart(outp / "gain_vs_events.png", points, f"relative gain over {labels[0]} vs gripper events per task",
                      "gripper events (expert)", "relative gain")
    return md


def seed_matrices(base_runs: list, other_runs: list, task: str):
    """(S, E) 0/1 outcomes of two variants, row i from their i-th folders, columns the evaluation seeds every
    folder of both holds; None when they share none."""
    eps = [{e["seed"]: e["success"] for e in r["tasks"][task]["per_episode"]} for r in base_runs + other_runs]
    common = sorted(set.intersection(*(set(e) for e in eps)))
    if not common:
        return None
    X = np.array([[float(e[s]) for s in common] for e in eps])
    return X[:len(base_runs)], X[len(base_runs):]



# ============================================================================ stage probe (the paper's qualitative analysis)

def probe(ckpt: str, task: str, seed: int, out: str, device="cpu") -> dict:
    """Roll out the policy once; at every step read the StaKe heads (which inference never uses) and plot the
    stage head's probability against the rollout's true gripper stage, and the keyframe head's error. A twin
    task rolls out in twin.Env directly (not through eval_real.py's client)."""
    import torch
    import plots
    from model import Policy
    from world import twin
    scene = twin if task in twin.TASKS else sim
    torch.manual_seed(seed)  # select_action draws the flow's noise from the global generator
    policy = Policy.load(ckpt, device=device)
    env = scene.Env(task, cameras=policy.cameras, image_size=tuple(policy.image_size))
    obs = env.reset(eval_seeds(seed, 1)[0])
    policy.reset()
    probs, keys, acts = [], [], []
    for _ in range(scene.TASKS[task].max_steps):
        pr = policy.probe(obs)
        probs.append(np.asarray(pr["stage_prob"], np.float32))
        keys.append(np.asarray(pr["keyframe"], np.float32))
        a = policy.select_action(obs)
        acts.append(a)
        obs = env.step(a)
        if env.success:
            break
    acts, probs, keys = np.stack(acts), np.stack(probs), np.stack(keys)
    seg = segment.segment(acts[:, scene.GRIPPER_INDICES], levels=(0.0, 1.0))
    true_stage = seg.stage.astype(np.float32)  # (T, 2) from the executed commanded gripper
    true_key = segment.keyframe_targets(acts, seg)
    key_err = np.abs(keys - true_key)[:, [i for i in range(acts.shape[1]) if i not in scene.GRIPPER_INDICES]].mean(1)
    T = len(acts)
    plots.stage_probe(out, f"{task} seed {env.seed}: success={env.success}; stage head p(skill) vs true stage",
                      probs, true_stage, key_err, seg.events)
    agree = float(((probs > 0.5) == (true_stage[:, :probs.shape[1]] > 0.5 if probs.shape[1] == true_stage.shape[1]
                                      else true_stage.max(1, keepdims=True) > 0.5)).mean())
    return {"steps": T, "success": bool(env.success), "stage_agreement": agree,
            "keyframe_l1_mean": float(key_err.mean()), "events": seg.events}



# ============================================================================ perception or control?

def true_positions(ckpt: str, task: str, episodes: int, noise_scale: float = 0.0, max_steps: int = 0,
                   batch: int = 25) -> dict:
    """A grounded policy on the same seeds twice: with its front end's object positions, and with the simulator's
    (world.located, at every query). A gap says the front end limits the policy; none, its control. Bimanual tasks
    roll out as eval_sim.py does (batches of `batch` seeds); twin tasks through eval_real.py --robot mujoco's loop,
    as their recipes evaluate."""
    import torch
    from eval_sim import environments
    from world import located, twin
    from model import Policy
    policy = Policy.load(ckpt)
    policy.noise_scale = noise_scale
    fe = next((m for m in policy.model.modules() if hasattr(m, "ground_head")), None)
    if fe is None or not fe.cfg.grounded:
        raise ValueError(f"{ckpt}: not a grounded policy (train.py --grounded): it reads no object positions")
    mu, sd = torch.tensor(fe.cfg.ground_mean), torch.tensor(fe.cfg.ground_std)
    shown = fe.ground_head

    class Truth(torch.nn.Module):  # stands in for ground_head: the env's positions, normalised as the head's output
        def forward(self, xy):  # (B, C*K*2) -> (B, 2R)
            where = np.stack([located(e)[1] for e in at["envs"]]) if "envs" in at else located(at["env"])[1][None]
            return ((torch.as_tensor(where, dtype=torch.float32) - mu) / sd).expand(len(xy), -1).to(xy)

    at, out = {}, {}  # at["env"] (twin) or at["envs"] (a batch's live rows): where Truth reads the positions
    if task in twin.TASKS:  # the Franka twin: eval_real.py --robot mujoco's loop, as its recipes evaluate
        import eval_real
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # as eval_real.load_policy: the same rollouts
        try:
            for name, head in (("front_end", shown), ("true_positions", Truth())):
                fe.ground_head = head
                torch.manual_seed(0)
                with tempfile.TemporaryDirectory() as tmp:
                    o = eval_real.Options(ckpt=ckpt, task=task, robot="mujoco", episodes=episodes, out=tmp,
                                          noise_scale=noise_scale, max_steps=max_steps or 600)
                    backend = twin.TwinBackend(task, list(policy.cameras), tuple(policy.image_size), o.dynamics,
                                               o.arm, workspace=eval_real.workspace(o))  # as evaluate_twin builds it
                    at["env"] = backend.env
                    res = eval_real.evaluate_twin(o, policy=policy, log=lambda *a: None, backend=backend)
                out[name] = [e["success"] for e in res["tasks"][task]["per_episode"]]
                seeds = [e["seed"] for e in res["tasks"][task]["per_episode"]]
        finally:
            fe.ground_head = shown
    else:  # eval_sim's rollouts; each observation carries its env, so Truth reads the live envs of each query
        cfg = EvalConfig(ckpt=ckpt, task=[task], episodes=episodes, batch=batch, noise_scale=noise_scale,
                         max_steps=max_steps)
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # as eval_sim.py --workers 2: the same rollouts
        envs = environments(task, tuple(policy.cameras), tuple(policy.image_size), min(batch, episodes))
        predict, seeds = policy.predict_chunk, eval_seeds(0, episodes)

        def predict_reading(obs, **kw):  # (B obs) -> the envs whose positions Truth returns, in the batch's order
            at["envs"] = [o["env"] for o in obs]
            return predict(obs, **kw)

        def tagged(env, observe):  # env's observations carry env itself
            return lambda *a, **k: observe(*a, **k) | {"env": env}
        for e in envs:
            e.observe = tagged(e, e.observe)
        policy.predict_chunk = predict_reading
        try:
            for name, head in (("front_end", shown), ("true_positions", Truth())):
                fe.ground_head = head
                out[name] = [r["success"] for i in range(0, episodes, batch)
                             for r in rollout_batch(policy, task, seeds[i:i + batch], cfg)]
        finally:
            fe.ground_head, policy.predict_chunk = shown, predict
            for e in envs:
                del e.observe
    a, b = out["front_end"], out["true_positions"]
    res = {"task": task, "episodes": episodes, "noise_scale": noise_scale, "front_end": sum(a),
           "true_positions": sum(b), "mcnemar_p": mcnemar_exact(sum(x and not y for x, y in zip(a, b)),
                                                                sum(y and not x for x, y in zip(a, b))),
           "per_episode": [{"seed": s, "front_end": bool(x), "true_positions": bool(y)}  # for paired comparisons
                           for s, x, y in zip(seeds, a, b)]}
    print(f"{task}: {res['front_end']}/{episodes} with the front end's positions, {res['true_positions']}/{episodes} "
          f"with the simulator's (same seeds; exact McNemar p {res['mcnemar_p']:.2g})")
    return res


# ============================================================================ open-loop check

def openloop(ckpt: str, folder: str, steps=(0, 5, 10, 20, 30, 45), episodes=10, device="cpu",
             noise_scale: float = 1.0) -> dict:
    """Open-loop check on recorded episodes: the policy's chunk at step t against the demonstration's next
    actions. Per t: mean over episodes of the worst joint's error (rad), averaged over the executed steps, beside
    how far the demonstration moves over them. Error ~ motion at t = 0 means the first decision (which object,
    which arm) was not learned even on these episodes; later steps can be fit by continuing the motion.

    By phase: the chunk at every chunk boundary (where a closed-loop rollout queries), grouped by the gripper
    events the demonstration has made by then (phase k: after event k, before event k + 1, as gripper_events
    reads them). Per phase: the arm joints' error as above, the gripper's (mean |policy - demo| of
    its command in [0, 1], worst gripper), and the demonstration's motion. A phase the policy cannot follow even
    on its training episodes is where a rollout departs from them for lack of fit, not of closed-loop drift."""
    import torch
    from model import Policy
    policy = Policy.load(ckpt, device=device)
    policy.binary_gripper = False  # a close one step late counts by how far it is, not as 1; as before
    policy.noise_scale = noise_scale
    paths = data.episode_paths(folder)[:episodes]
    if not paths:
        raise data.DataError(f"{folder}: no episode_*.npz files")
    eps, n, rows = [data.load_episode(p) for p in paths], policy.cfg.n_action_steps, {}
    grip = [int(i) for i in policy.gripper_indices]
    joints = [i for i in range(eps[0]["action"].shape[1]) if i not in grip]

    def obs(ep, t):
        return {"images": {c: ep["images"][c][t] for c in policy.cameras}, "qpos": ep["qpos"][t],
                "prev_qpos": ep["qpos"][max(t - 1, 0)], "instruction": ep["instruction"]}

    for t in steps:
        err, move = [], []
        for ep in eps:
            if t + n > len(ep["action"]):
                continue
            chunk = policy.predict_chunk([obs(ep, t)], generator=torch.Generator().manual_seed(t))[0][:n]  # (n, A)
            demo = ep["action"][t:t + n]
            err.append(float(np.abs(chunk - demo).max(1).mean()))
            move.append(float(np.abs(demo - ep["qpos"][t]).max(1).mean()))
        if err:
            rows[t] = {"error_rad": float(np.mean(err)), "demo_motion_rad": float(np.mean(move)), "episodes": len(err)}

    by_phase = {}                                        # phase -> [(joint error, gripper error, demo motion)]
    for i, ep in enumerate(eps):
        events = np.array(gripper_events(ep["action"], grip), int)
        ts = list(range(0, len(ep["action"]) - n + 1, n))
        chunks = policy.predict_chunk([obs(ep, t) for t in ts], generator=torch.Generator().manual_seed(i))[:, :n]
        for t, chunk in zip(ts, chunks):                 # chunk: (n, A)
            demo = ep["action"][t:t + n]
            by_phase.setdefault(int((events <= t).sum()), []).append((
                float(np.abs(chunk[:, joints] - demo[:, joints]).max(1).mean()),
                float(np.abs(chunk[:, grip] - demo[:, grip]).max(1).mean()),
                float(np.abs(demo[:, joints] - ep["qpos"][t][joints]).max(1).mean())))
    phases = {k: {"joint_error_rad": float(np.mean([r[0] for r in v])),
                  "gripper_error": float(np.mean([r[1] for r in v])),
                  "demo_motion_rad": float(np.mean([r[2] for r in v])), "queries": len(v)}
              for k, v in sorted(by_phase.items())}
    return {"ckpt": ckpt, "data": folder, "noise_scale": noise_scale, "steps": rows, "phases": phases}



# ============================================================================ expert success (was data.py experts)

def _expert_stats(args):
    from world import experts
    import world
    task, seeds = args
    env = world.make_env(task, render=False)
    rows = [(s, *experts.run_expert(task, s, env)[:3]) for s in seeds]
    return task, rows


def experts(tasks, n_seeds, workers=1) -> dict:
    """Expert success over seeds 0..n-1 per task, without rendering; failures listed with their stage."""
    import world
    jobs = [(t, list(range(n_seeds))) for t in tasks]
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers, initializer=data.quiet_worker) as pool:
            out = pool.map(_expert_stats, jobs)
    else:
        out = list(map(_expert_stats, jobs))
    report = {}
    for task, rows in out:
        suite = world.suite_of(task)
        stages = [s[0] for s in suite.STAGES[task]]
        lengths = [r[3] for r in rows]
        # failed_at_stage: the first stage the attempt did not reach ("all" = every stage reached, success
        # condition not held long enough)
        fails = [{"seed": r[0], "failed_at_stage": stages[r[2]] if r[2] < len(stages) else "all", "steps": r[3]}
                 for r in rows if not r[1]]
        report[task] = {"success": sum(r[1] for r in rows) / len(rows), "seeds": len(rows),
                        "failures": fails, "failures_by_stage": {s: sum(f["failed_at_stage"] == s for f in fails) for s in stages + ["all"]},
                        "episode_length_mean": float(np.mean(lengths)), "episode_length_max": int(max(lengths)),
                        "max_steps": suite.TASKS[task].max_steps,
                        "max_steps_over_longest": round(suite.TASKS[task].max_steps / max(lengths), 2),
                        "gripper_events": suite.TASKS[task].gripper_events}
    return report


# ============================================================================ CLI

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["compare"]:
            p = argparse.ArgumentParser(prog="diagnostics.py compare")
            p.add_argument("dirs", nargs="+", help="DIR, or LABEL=DIR1,DIR2,... (one folder per training seed or "
                           "evaluation seed block, paired by position with the baseline's)")
            p.add_argument("--out", required=True)
            p.add_argument("--labels", nargs="+", default=None)
            a = p.parse_args(argv[1:])
            named = [d.split("=", 1) if "=" in d else (None, d) for d in a.dirs]
            labels = a.labels or [lab or Path(d).name for lab, d in named]
            print(compare([d.split(",") for _, d in named], a.out, labels))
        elif argv[:1] == ["probe"]:
            p = argparse.ArgumentParser(prog="diagnostics.py probe")
            p.add_argument("--ckpt", required=True)
            p.add_argument("--task", required=True)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--out", required=True)
            a = p.parse_args(argv[1:])
            res = probe(a.ckpt, a.task, a.seed, a.out)
            print(json.dumps({"command": "python lab/diagnostics.py " + " ".join(argv), "git_revision": data.git_revision()} | res))
        elif argv[:1] == ["openloop"]:
            p = argparse.ArgumentParser(prog="diagnostics.py openloop")
            p.add_argument("--ckpt", required=True)
            p.add_argument("--data", required=True, help="episode folder (e.g. the training demonstrations)")
            p.add_argument("--episodes", type=int, default=10)
            p.add_argument("--noise-scale", type=float, default=1.0, help="the flow's starting noise times this "
                           "(the recipes evaluate at 0)")
            p.add_argument("--out", default="", help="JSON file to write")
            a = p.parse_args(argv[1:])
            res = {"command": "python lab/diagnostics.py " + " ".join(argv), "git_revision": data.git_revision()} | \
                openloop(a.ckpt, a.data, episodes=a.episodes, noise_scale=a.noise_scale)
            for t, r in res["steps"].items():
                print(f"t={t:3d}  open-loop error {r['error_rad']:.3f} rad  (the demonstration moves {r['demo_motion_rad']:.3f})")
            for k, r in res["phases"].items():
                print(f"after {k} gripper event(s): joints {r['joint_error_rad']:.3f} rad (the demonstration moves "
                      f"{r['demo_motion_rad']:.3f}), gripper {r['gripper_error']:.3f}, {r['queries']} queries")
            if a.out:
                data.atomic_write_bytes(Path(a.out), lambda f: f.write(json.dumps(res, indent=1).encode()))
        elif argv[:1] == ["true-positions"]:
            p = argparse.ArgumentParser(prog="diagnostics.py true-positions", description=true_positions.__doc__.split("\n")[0])
            p.add_argument("--ckpt", required=True)
            p.add_argument("--task", required=True)
            p.add_argument("--episodes", type=int, default=50)
            p.add_argument("--noise-scale", type=float, default=0.0)
            p.add_argument("--batch", type=int, default=25, help="seeds rolled out together (bimanual tasks)")
            p.add_argument("--out", default="", help="JSON file to write")
            a = p.parse_args(argv[1:])
            res = {"command": "python lab/diagnostics.py " + " ".join(argv), "git_revision": data.git_revision(),
                   **true_positions(a.ckpt, a.task, a.episodes, a.noise_scale, batch=a.batch)}
            if a.out:
                data.atomic_write_bytes(Path(a.out), lambda f: f.write(json.dumps(res, indent=1).encode()))
        elif argv[:1] == ["experts"]:
            experts_main(argv[1:])
        else:
            print(__doc__.strip())
            return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    except (ValueError, data.DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return 0


def experts_main(argv):
    import world
    p = argparse.ArgumentParser(prog="diagnostics.py experts", description=experts.__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--tasks", nargs="+", default=None, help="default: the bimanual suite (twin tasks: franka_*)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON file to write (e.g. results/experts.json)")
    a = p.parse_args(argv)
    tasks = a.tasks or list(sim.TASKS)
    if unknown := [t for t in tasks if t not in world.all_tasks()]:
        raise data.DataError(f"unknown task(s) {unknown}; known tasks: {', '.join(world.all_tasks())}")
    rep = experts(tasks, a.seeds, a.workers)
    for t, r in rep.items():
        print(f"{t:12s} success {r['success']:.2f} over {r['seeds']} seeds; failures by the stage not reached "
              f"{ {k: v for k, v in r['failures_by_stage'].items() if v} }; longest {r['episode_length_max']} "
              f"steps, limit {r['max_steps']} ({r['max_steps_over_longest']}x)")
    if a.out:
        import platform
        doc = {"command": "python " + " ".join(["lab/diagnostics.py", "experts", *argv]),
               "git_revision": data.git_revision(), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores", "results": rep}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        data.atomic_write_bytes(Path(a.out), lambda f: f.write(json.dumps(doc, indent=1).encode()))




if __name__ == "__main__":
    sys.exit(main())
