"""Closed-loop evaluation in the MuJoCo scenes, with failure attribution, comparisons and diagnostics.

  python eval_sim.py --ckpt RUN/ckpt.pt --task lift_block --episodes 100 --out DIR [--video 2] [--workers 2]
  python eval_sim.py compare DIR [DIR ...] --out REPORT_DIR      # markdown table + PNG charts + paired test
  python eval_sim.py compare none=D1,D2 stake=D3,D4 --out R      # several training seeds per variant
  python eval_sim.py probe --ckpt RUN/ckpt.pt --task T --out probe.png   # StaKe heads along a rollout
  python eval_sim.py openloop --ckpt RUN/ckpt.pt --data DIR       # chunk error on demonstrations, by step and phase
  python eval_sim.py bench --ckpt RUN/ckpt.pt [--task T]           # episodes/min, as evaluation was and as it is

Evaluation seeds are sim.EVAL_SEED_OFFSET + seed * 100_000 + i: disjoint from demonstration seeds (which
data.py keeps below the offset) by construction, and identical across variants, so results pair up.

Failure types (from the task's ordered progress stages in sim.py; the first stage not reached decides):
  motion-fail  the next stage needed is a "motion" stage (reach / grasp): it never achieved the grasp it needed
  skill-fail   the next stage needed is a "skill" stage (lift, transfer, handover, place, stack): it had the
               grasp and lost it or failed the post-grasp step
  timeout      every stage was reached but the success condition did not hold long enough before the limit
The failure step is the step after which progress never advanced (the last stage's step, 0 if none).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import data
import segment
import sim
import world
from data import opt
import stats
from stats import mcnemar_exact, wilson  # Wilson 95% interval, exact McNemar (shared with eval_real.py)


@dataclass
class EvalConfig:
    ckpt: str = opt("", "checkpoint written by train.py (RUN/ckpt.pt)")
    task: list = opt([], "task name(s); default: the tasks the checkpoint was trained on")
    episodes: int = opt(20, "evaluation episodes per task")
    out: str = opt("outputs/eval", "folder for results.json and videos")
    seed: int = opt(0, "evaluation seed block: seeds are EVAL_SEED_OFFSET + seed * 100_000 + i")
    video: int = opt(0, "save this many rollouts per task as mp4 (instruction and gripper state drawn)")
    workers: int = opt(1, "parallel worker processes (each runs a batch of environments)")
    batch: int = opt(10, "environments stepped together per worker; one batched policy call per chunk")
    cameras: list = opt([], "default: the checkpoint's cameras")
    blank_images: bool = opt(False, "control: all images black (a VLA should fail without vision)")
    shuffle_instructions: bool = opt(False, "control: each episode gets the instruction of an episode with another "
                                     "target (shuffled_instructions)")
    device: str = opt("cpu", "torch device for the policy")
    max_steps: int = opt(0, "override the task's step limit (0: the task's max_steps)")
    demo_seeds: bool = opt(False, "diagnostic: roll out on demonstration seeds 0..N-1 (the training layouts)")
    n_action_steps: int = opt(0, "steps of each chunk executed before re-querying (0: the checkpoint's)")
    noise_scale: float = opt(1.0, "the flow's starting noise times this (0: one deterministic chunk per observation)")

    def __post_init__(self):
        if self.episodes < 1 or self.workers < 1 or self.batch < 1 or self.video < 0 or self.n_action_steps < 0:
            raise ValueError("--episodes, --workers and --batch must be >= 1; --video, --n-action-steps >= 0")
        if not 0.0 <= self.noise_scale <= 1.0:
            raise ValueError(f"--noise-scale {self.noise_scale}: must be in [0, 1]")
        unknown = [t for t in self.task if t not in sim.TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; eval_sim.py runs the bimanual tasks {', '.join(sim.TASKS)} "
                             f"(the Franka twin's: eval_real.py --robot mujoco)")


def eval_seeds(seed, n):
    return [sim.EVAL_SEED_OFFSET + seed * 100_000 + i for i in range(n)]




# ============================================================================ attribution

def classify(success: bool, stage: int, stages: list) -> str:
    """Failure type from the furthest stage reached (see module docstring)."""
    if success:
        return "success"
    if stage >= len(stages):
        return "timeout"
    return "motion-fail" if stages[stage][1] == "motion" else "skill-fail"


def gripper_events(actions: np.ndarray, gripper_indices) -> list:
    """The policy's own gripper events, from its commanded gripper channels (1 = open, 0 = closed)."""
    if len(actions) < 2:
        return []
    return [int(t) for t, _, _ in segment.segment(actions[:, gripper_indices], levels=(0.0, 1.0)).events]


def nearest_distance(step: int, events: list) -> float | None:
    return float(min(abs(step - e) for e in events)) if events else None


# ============================================================================ rollouts

_envs = {}  # (task, cameras, image size) -> environments of this process, reused across batches


def environments(task: str, cameras: tuple, image_size: tuple, n: int) -> list:
    """n environments of `task`, built once per process (building one compiles its scene and opens a
    renderer: about half as long as an episode's physics); reset(seed) restores everything a rollout reads."""
    pool = _envs.setdefault((task, cameras, image_size), [])
    while len(pool) < n:
        pool.append(sim.Env(task, cameras=cameras, image_size=image_size))
    return pool[:n]


def rollout_batch(policy, task: str, seeds: list, cfg: EvalConfig, instructions=None, record_video=0,
                  render_every_step=False):
    """Roll out len(seeds) environments in lock-step; one batched policy call per chunk. Returns per-episode dicts.
    Cameras render only at the steps whose images are read (render_every_step: at all, for `bench`)."""
    cams = cfg.cameras or policy.cameras
    envs = environments(task, tuple(cams), tuple(policy.image_size), len(seeds))
    obs = [e.reset(s) for e, s in zip(envs, seeds)]
    if instructions is not None:
        for o, ins in zip(obs, instructions):
            o["instruction"] = ins
    limit = cfg.max_steps or sim.TASKS[task].max_steps
    n_exec = max(1, min(cfg.n_action_steps or policy.n_action_steps, policy.horizon))
    actions, closes = [[] for _ in seeds], [[] for _ in seeds]
    frames = [[] for _ in range(min(record_video, len(seeds)))]
    latency, calls = 0.0, 0
    done = [False] * len(seeds)
    chunk = None
    noise = {}
    if hasattr(policy, "device"):  # the flow's noise is seeded by the batch's first seed: reruns repeat exactly
        import torch
        noise = {"generator": torch.Generator().manual_seed(int(seeds[0]))}
    for t in range(limit):
        live = [i for i, d in enumerate(done) if not d]
        if not live:
            break
        if t % n_exec == 0:
            batch = []
            for i in live:
                o = obs[i]
                if cfg.blank_images:
                    o = o | {"images": {c: np.zeros_like(v) for c, v in o["images"].items()}}
                batch.append(o)
            t0 = time.perf_counter()
            pred = policy.predict_chunk(batch, **noise)  # (B, H, A)
            latency += time.perf_counter() - t0
            calls += 1
            chunk = {i: pred[j] for j, i in enumerate(live)}
        for i in live:
            a = chunk[i][t % n_exec]
            if i < len(frames):
                frames[i].append(data.annotate(np.concatenate([obs[i]["images"][c] for c in cams], 1),
                                               obs[i]["instruction"], a[sim.GRIPPER_INDICES]))
            closes[i] += close_offsets(envs[i], actions[i][-1] if actions[i] else None, a, t)
            ins = obs[i]["instruction"]
            # cameras only where they are read: the next query step, and every step of a recorded episode
            obs[i] = envs[i].step(a, render=render_every_step or (t + 1) % n_exec == 0 or i < len(frames))
            obs[i]["instruction"] = ins
            actions[i].append(np.asarray(a, np.float32))
            if envs[i].success:
                done[i] = True
    return [{**episode_record(e, s, obs[i]["instruction"], np.stack(actions[i]), sim.GRIPPER_INDICES),
             "closes": closes[i], "latency_ms_per_batched_call": 1000 * latency / max(calls, 1), "batch": len(seeds),
             "video_frames": frames[i] if i < len(frames) else None} for i, (e, s) in enumerate(zip(envs, seeds))]


def close_offsets(env, prev, action, t: int) -> list:
    """Where each gripper the policy commands to close (1 -> 0 across 0.5; open at the start) is against the
    nearest object the task names (layout.roles, pads left out): the horizontal and vertical offset of its tcp
    from the object's centre, cm, at the step the command is given. A grasp needs the fingers around the
    object, so the offsets of failed rollouts' closes tell a missed grasp from one that never came."""
    out = []
    for arm, g in zip(sim.ARMS, sim.GRIPPER_INDICES):
        if (1.0 if prev is None else prev[g]) >= 0.5 > action[g]:
            names = [(r, n) for r, n in env.layout.roles.items() if not r.startswith("pad")]
            tcp = env.tcp_pos(arm)
            role, name = min(names, key=lambda rn: np.linalg.norm((tcp - env.obj_pos(rn[1]))[:2]))
            d = 100 * (tcp - env.obj_pos(name))
            out.append({"t": t, "arm": arm, "role": role, "xy_cm": round(float(np.linalg.norm(d[:2])), 2),
                        "dz_cm": round(float(d[2]), 2)})
    return out


def episode_record(env, seed: int, instruction: str, actions: np.ndarray, gripper_indices) -> dict:
    """One finished rollout as results.json reports it (eval_sim.py and eval_real.py --robot mujoco): outcome,
    furthest stage, failure type and step, and the policy's own gripper events from its commanded actions."""
    ev = gripper_events(actions, gripper_indices)
    ok, fstep = bool(env.success), env.stage_steps[-1] if env.stage_steps else 0
    uniform_step = int(np.random.default_rng(seed).integers(0, max(len(actions), 1)))  # the seed's own draw
    return {"seed": seed, "instruction": instruction, "true_instruction": env.layout.instruction, "success": ok,
            "furthest_stage": env.stages[env.stage - 1][0] if env.stage else "none", "stages_reached": env.stage,
            "failure_type": classify(ok, env.stage, env.stages), "failure_step": None if ok else fstep,
            "failure_to_nearest_event": None if ok else nearest_distance(fstep, ev),
            "uniform_step_to_nearest_event": None if ok else nearest_distance(uniform_step, ev),
            "gripper_events": ev, "length": len(actions)}


def _worker(args):
    cfg, task, seeds, instructions, record_video = args
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(cfg.workers, 1)))
    if (cfg.ckpt, cfg.device) not in _worker_policy:  # a worker serves one evaluate() call: load once
        from model import Policy
        _worker_policy.clear()
        _worker_policy[cfg.ckpt, cfg.device] = Policy.load(cfg.ckpt, device=cfg.device)
    policy = with_eval_options(_worker_policy[cfg.ckpt, cfg.device], cfg)
    return rollout_batch(policy, task, seeds, cfg, instructions, record_video)


_worker_policy = {}


def with_eval_options(policy, cfg: EvalConfig):
    """The evaluation's settings of how a Policy acts (one place for the main process and the workers)."""
    policy.noise_scale = cfg.noise_scale
    return policy


def evaluate(cfg: EvalConfig, command: str | None = None) -> dict:
    """Evaluate cfg.ckpt on each task; writes OUT/results.json. `command` (default: this process's argv) is recorded."""
    from model import Policy
    if not Path(cfg.ckpt).is_file():
        raise ValueError(f"--ckpt {cfg.ckpt}: no such checkpoint file")
    policy = with_eval_options(Policy.load(cfg.ckpt, device=cfg.device), cfg)
    trained = list(policy.meta.get("tasks", {}))
    tasks = cfg.task or trained  # default: the tasks it was trained on
    if not tasks:
        raise ValueError("no --task given and the checkpoint names no tasks")
    if unseen := [t for t in tasks if t not in trained]:
        raise ValueError(f"--task {' '.join(unseen)}: {cfg.ckpt} was trained on {', '.join(trained) or 'no named task'}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": command or "python " + " ".join(sys.argv), "git_revision": data.git_revision(),
               "config": asdict(cfg), "tasks": {}}
    t_start = time.time()
    pool = None  # one pool for all tasks: each worker imports torch once, not once per task
    if cfg.workers > 1 and cfg.episodes > cfg.batch:
        import multiprocessing as mp
        pool = mp.get_context("spawn").Pool(cfg.workers)
    try:
        for task in tasks:
            _evaluate_task(cfg, task, policy, pool, out, results)
    finally:
        if pool is not None:
            pool.terminate()
    results["wall_s"] = time.time() - t_start
    data.atomic_write_bytes(out / "results.json", lambda f: f.write(json.dumps(results, indent=1).encode()))
    return results


def shuffled_instructions(task: str, seeds: list, seed: int) -> list:
    """The --shuffle-instructions control: each episode gets the instruction of another episode whose objects
    play other roles (another target block), so that the words ask for something else in this scene. Taking any
    other episode's instruction would repeat the episode's own request by chance (lift_block: 38 of 100, with
    four block colours), and a policy that follows language perfectly would then score that chance times its
    skill. Only where no episode's roles differ does an episode get any other one's instruction."""
    layouts = [sim.TASKS[task].layout(s) for s in seeds]
    order = np.random.default_rng(seed).permutation(len(seeds))
    out = [None] * len(seeds)
    for k, i in enumerate(order):  # walk the random cycle from episode i to the first one asking for another thing
        donors = [order[(k + j) % len(seeds)] for j in range(1, len(seeds))]
        j = next((d for d in donors if layouts[d].roles != layouts[i].roles), donors[0] if donors else i)
        out[i] = layouts[j].instruction
    return out


def _evaluate_task(cfg: EvalConfig, task: str, policy, pool, out: Path, results: dict) -> None:
    """Roll out one task (in the pool's workers when given) and store its summary in results["tasks"][task]."""
    seeds = list(range(cfg.episodes)) if cfg.demo_seeds else eval_seeds(cfg.seed, cfg.episodes)
    instructions = shuffled_instructions(task, seeds, cfg.seed) if cfg.shuffle_instructions else None
    jobs = []
    for b in range(0, len(seeds), cfg.batch):
        sl = slice(b, b + cfg.batch)
        jobs.append((cfg, task, seeds[sl], instructions[sl] if instructions else None,
                     max(0, min(cfg.video - b, cfg.batch))))
    t0 = time.time()
    if pool is not None and len(jobs) > 1:
        parts = pool.map(_worker, jobs)
    else:
        parts = [rollout_batch(policy, task, j[2], cfg, j[3], j[4]) for j in jobs]
    eps = [e for p in parts for e in p]
    wall = time.time() - t0
    for k, e in enumerate(eps):
        frames = e.pop("video_frames")
        if frames:
            data.write_video(out / f"{task}_{k:03d}_{'ok' if e['success'] else e['failure_type']}.mp4", frames, sim.FPS)
    results["tasks"][task] = summarise(task, eps, wall)
    r = results["tasks"][task]
    print(f"{task:12s} success {r['success_rate']:.2f} [{r['wilson95'][0]:.2f}, {r['wilson95'][1]:.2f}] "
          f"({r['successes']}/{r['episodes']})  failures {r['failure_types']}  {r['episodes_per_min']:.1f} episodes/min")
    for key in ("success", "failure"):
        if f"first_close_xy_cm_{key}" in r:
            print(f"{'':12s} first close, {key}: {r[f'first_close_xy_cm_{key}'][1]:.1f} cm from the nearest object "
                  f"(quartiles {r[f'first_close_xy_cm_{key}'][0]:.1f} - {r[f'first_close_xy_cm_{key}'][2]:.1f})")


def summarise(task, eps, wall):
    k, n = sum(e["success"] for e in eps), len(eps)
    fails = [e for e in eps if not e["success"]]
    near = [e["failure_to_nearest_event"] for e in fails if e["failure_to_nearest_event"] is not None]
    unif = [e["uniform_step_to_nearest_event"] for e in fails if e["uniform_step_to_nearest_event"] is not None]
    return {"gripper_events": world.suite_of(task).TASKS[task].gripper_events, "episodes": n, "successes": k,
            "success_rate": k / n, "wilson95": wilson(k, n),
            "failure_types": {t: sum(e["failure_type"] == t for e in eps) for t in ("motion-fail", "skill-fail", "timeout")},
            "failure_to_nearest_event_mean": float(np.mean(near)) if near else None,
            "uniform_step_to_nearest_event_mean": float(np.mean(unif)) if unif else None,
            "episodes_per_min": 60 * n / max(wall, 1e-9), **first_close_quartiles(eps), "per_episode": eps}


def first_close_quartiles(eps) -> dict:
    """Quartiles (cm) of the horizontal offset of each rollout's first close from the nearest object, for the
    successful and the failed rollouts (bimanual evaluations record closes; the twin's do not)."""
    out = {}
    for key, group in (("success", [e for e in eps if e["success"]]), ("failure", [e for e in eps if not e["success"]])):
        xy = [e["closes"][0]["xy_cm"] for e in group if e.get("closes")]
        if xy:
            out[f"first_close_xy_cm_{key}"] = [round(float(q), 2) for q in np.percentile(xy, (25, 50, 75))]
    return out


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
                  "Relative gain = (variant - baseline) / baseline; 'inconclusive' where the baseline is within 0.1 of floor or ceiling.", "",
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
                base, var = pooled[t][0]["success_rate"], pooled[t][vi]["success_rate"]
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
    stage head's probability against the rollout's true gripper stage, and the keyframe head's error."""
    import torch
    import plots
    from model import Policy
    torch.manual_seed(seed)  # select_action draws the flow's noise from the global generator
    policy = Policy.load(ckpt, device=device)
    env = sim.Env(task, cameras=policy.cameras, image_size=tuple(policy.image_size))
    obs = env.reset(eval_seeds(seed, 1)[0])
    policy.reset()
    probs, keys, acts = [], [], []
    for _ in range(sim.TASKS[task].max_steps):
        pr = policy.probe(obs)
        probs.append(np.asarray(pr["stage_prob"], np.float32))
        keys.append(np.asarray(pr["keyframe"], np.float32))
        a = policy.select_action(obs)
        acts.append(a)
        obs = env.step(a)
        if env.success:
            break
    acts, probs, keys = np.stack(acts), np.stack(probs), np.stack(keys)
    seg = segment.segment(acts[:, sim.GRIPPER_INDICES], levels=(0.0, 1.0))
    true_stage = seg.stage.astype(np.float32)  # (T, 2) from the executed commanded gripper
    true_key = segment.keyframe_targets(acts, seg)
    key_err = np.abs(keys - true_key)[:, [i for i in range(acts.shape[1]) if i not in sim.GRIPPER_INDICES]].mean(1)
    T = len(acts)
    plots.stage_probe(out, f"{task} seed {env.seed}: success={env.success}; stage head p(skill) vs true stage",
                      probs, true_stage, key_err, seg.events)
    agree = float(((probs > 0.5) == (true_stage[:, :probs.shape[1]] > 0.5 if probs.shape[1] == true_stage.shape[1]
                                      else true_stage.max(1, keepdims=True) > 0.5)).mean())
    return {"steps": T, "success": bool(env.success), "stage_agreement": agree,
            "keyframe_l1_mean": float(key_err.mean()), "events": seg.events}


# ============================================================================ benchmark

def bench(ckpt: str, task: str = "lift_block", episodes: int = 10, batch: int = 10, noise_scale: float = 0.0) -> dict:
    """Episodes per minute of one process rolling out `ckpt` on the same seeds, as evaluation was (environments
    built for every batch, cameras rendered at every control step) and as it is (built once per process,
    cameras rendered only at the steps the policy reads); the outcomes must be the same."""
    import torch
    from model import Policy
    torch.set_num_threads(1)
    policy = Policy.load(ckpt)
    policy.noise_scale = noise_scale
    cfg = EvalConfig(ckpt=ckpt, task=[task], episodes=episodes, batch=batch, noise_scale=noise_scale)
    seeds, rates, outcomes = eval_seeds(0, episodes), {}, {}
    for every in (True, False):
        _envs.clear()
        t0, eps = time.perf_counter(), []
        for b in range(0, episodes, batch):
            if every:
                _envs.clear()
            eps += rollout_batch(policy, task, seeds[b:b + batch], cfg, render_every_step=every)
        rates[every] = 60 * episodes / (time.perf_counter() - t0)
        outcomes[every] = [(e["success"], e["length"], e["gripper_events"]) for e in eps]
    if outcomes[True] != outcomes[False]:
        raise RuntimeError("bench: rendering only the read steps changed the outcomes")
    res = {"task": task, "episodes": episodes, "batch": batch, "successes": sum(o[0] for o in outcomes[False]),
           "episodes_per_min_before": rates[True], "episodes_per_min_now": rates[False],
           "speedup": rates[False] / rates[True]}
    print(f"{task}: {rates[True]:.1f} episodes/min as evaluation was, {rates[False]:.1f} as it is "
          f"({res['speedup']:.2f}x); same outcomes ({res['successes']}/{episodes} successes)")
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


# ============================================================================ CLI

def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["compare"]:
            p = argparse.ArgumentParser(prog="eval_sim.py compare")
            p.add_argument("dirs", nargs="+", help="DIR, or LABEL=DIR1,DIR2,... (one folder per training seed or "
                           "evaluation seed block, paired by position with the baseline's)")
            p.add_argument("--out", required=True)
            p.add_argument("--labels", nargs="+", default=None)
            a = p.parse_args(argv[1:])
            named = [d.split("=", 1) if "=" in d else (None, d) for d in a.dirs]
            labels = a.labels or [lab or Path(d).name for lab, d in named]
            print(compare([d.split(",") for _, d in named], a.out, labels))
        elif argv[:1] == ["probe"]:
            p = argparse.ArgumentParser(prog="eval_sim.py probe")
            p.add_argument("--ckpt", required=True)
            p.add_argument("--task", required=True)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--out", required=True)
            a = p.parse_args(argv[1:])
            res = probe(a.ckpt, a.task, a.seed, a.out)
            print(json.dumps({"command": "python eval_sim.py " + " ".join(argv), "git_revision": data.git_revision()} | res))
        elif argv[:1] == ["openloop"]:
            p = argparse.ArgumentParser(prog="eval_sim.py openloop")
            p.add_argument("--ckpt", required=True)
            p.add_argument("--data", required=True, help="episode folder (e.g. the training demonstrations)")
            p.add_argument("--episodes", type=int, default=10)
            p.add_argument("--noise-scale", type=float, default=1.0, help="the flow's starting noise times this "
                           "(the recipes evaluate at 0)")
            p.add_argument("--out", default="", help="JSON file to write")
            a = p.parse_args(argv[1:])
            res = {"command": "python eval_sim.py " + " ".join(argv), "git_revision": data.git_revision()} | \
                openloop(a.ckpt, a.data, episodes=a.episodes, noise_scale=a.noise_scale)
            for t, r in res["steps"].items():
                print(f"t={t:3d}  open-loop error {r['error_rad']:.3f} rad  (the demonstration moves {r['demo_motion_rad']:.3f})")
            for k, r in res["phases"].items():
                print(f"after {k} gripper event(s): joints {r['joint_error_rad']:.3f} rad (the demonstration moves "
                      f"{r['demo_motion_rad']:.3f}), gripper {r['gripper_error']:.3f}, {r['queries']} queries")
            if a.out:
                data.atomic_write_bytes(Path(a.out), lambda f: f.write(json.dumps(res, indent=1).encode()))
        elif argv[:1] == ["bench"]:
            p = argparse.ArgumentParser(prog="eval_sim.py bench", description=bench.__doc__.split("\n")[0])
            p.add_argument("--ckpt", required=True)
            p.add_argument("--task", default="lift_block")
            p.add_argument("--episodes", type=int, default=10)
            p.add_argument("--batch", type=int, default=10)
            p.add_argument("--json", default="", help="write the figures here")
            a = p.parse_args(argv[1:])
            res = {"command": "python eval_sim.py " + " ".join(argv), "git_revision": data.git_revision(),
                   **bench(a.ckpt, a.task, a.episodes, a.batch)}
            if a.json:
                data.atomic_write_bytes(Path(a.json), lambda f: f.write(json.dumps(res, indent=1).encode()))
        else:
            evaluate(data.parse_options(EvalConfig, argv, "eval_sim.py", __doc__.split("\n\n")[0]))
    except (ValueError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
