"""Closed-loop evaluation in the MuJoCo scenes, with failure attribution, comparisons and the main job.

  python eval_sim.py --ckpt RUN/ckpt.pt --task lift_block --episodes 100 --out DIR [--video 2] [--workers 2]
  python eval_sim.py compare DIR [DIR ...] --out REPORT_DIR      # markdown table + PNG charts + paired test
  python eval_sim.py compare none=D1,D2 stake=D3,D4 --out R      # several training seeds per variant
  python eval_sim.py probe --ckpt RUN/ckpt.pt --task T --out probe.png   # StaKe heads along a rollout
  python eval_sim.py main                                          # the README's end-to-end small job

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

import data
import segment
import sim


@dataclass
class EvalConfig:
    ckpt: str = ""  # checkpoint written by train.py (RUN/ckpt.pt)
    task: list = field(default_factory=list)  # task name(s); default: the tasks the checkpoint was trained on
    episodes: int = 20  # evaluation episodes per task
    out: str = "outputs/eval"  # folder for results.json and videos
    seed: int = 0  # evaluation seed block: seeds are EVAL_SEED_OFFSET + seed * 100_000 + i
    video: int = 0  # save this many rollouts per task as mp4 (instruction and gripper state drawn)
    workers: int = 1  # parallel worker processes (each runs a batch of environments)
    batch: int = 10  # environments stepped together per worker; one batched policy call per chunk
    cameras: list = field(default_factory=list)  # default: the checkpoint's cameras
    blank_images: bool = False  # control: all images black (a VLA should fail without vision)
    shuffle_instructions: bool = False  # control: each episode gets the instruction of an episode with another target (shuffled_instructions)
    device: str = "cpu"  # torch device for the policy
    max_steps: int = 0  # override the task's step limit (0: use sim.TASKS[task].max_steps)
    demo_seeds: bool = False  # diagnostic: roll out on demonstration seeds 0..N-1 (the training layouts), not held-out ones
    n_action_steps: int = 0  # steps of each chunk executed before re-querying (0: the checkpoint's; as eval_real.py)
    noise_scale: float = 1.0  # the flow's starting noise times this (0: one deterministic chunk per observation); model.py Policy
    raw_gripper: bool = False  # send the gripper output unsnapped (as evaluations before the tenth session did); default 0/1, model.py Policy

    def __post_init__(self):
        if self.episodes < 1 or self.workers < 1 or self.batch < 1 or self.video < 0 or self.n_action_steps < 0:
            raise ValueError("--episodes, --workers and --batch must be >= 1; --video, --n-action-steps >= 0")
        if not 0.0 <= self.noise_scale <= 1.0:
            raise ValueError(f"--noise-scale {self.noise_scale}: must be in [0, 1]")
        unknown = [t for t in self.task if t not in sim.TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known tasks: {', '.join(sim.TASKS)}")


def eval_seeds(seed, n):
    return [sim.EVAL_SEED_OFFSET + seed * 100_000 + i for i in range(n)]


wilson = data.wilson  # Wilson score 95% interval (data.py, shared with eval_real.py)


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

def rollout_batch(policy, task: str, seeds: list, cfg: EvalConfig, instructions=None, record_video=0):
    """Roll out len(seeds) environments in lock-step; one batched policy call per chunk. Returns per-episode dicts."""
    cams = cfg.cameras or policy.cameras
    envs = [sim.Env(task, cameras=cams, image_size=tuple(policy.image_size)) for _ in seeds]
    obs = [e.reset(s) for e, s in zip(envs, seeds)]
    if instructions is not None:
        for o, ins in zip(obs, instructions):
            o["instruction"] = ins
    limit = cfg.max_steps or sim.TASKS[task].max_steps
    n_exec = max(1, min(cfg.n_action_steps or policy.n_action_steps, policy.horizon))
    actions = [[] for _ in seeds]
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
            ins = obs[i]["instruction"]
            obs[i] = envs[i].step(a)
            obs[i]["instruction"] = ins
            actions[i].append(np.asarray(a, np.float32))
            if envs[i].success:
                done[i] = True
    out = []
    for i, (e, s) in enumerate(zip(envs, seeds)):
        acts = np.stack(actions[i])
        ev = gripper_events(acts, sim.GRIPPER_INDICES)
        fstep = e.stage_steps[-1] if e.stage_steps else 0
        rng = np.random.default_rng(s)
        uniform_step = int(rng.integers(0, len(acts)))
        out.append({
            "seed": s, "instruction": obs[i]["instruction"], "true_instruction": e.layout.instruction,
            "success": bool(e.success),
            "furthest_stage": e.stages[e.stage - 1][0] if e.stage else "none", "stages_reached": e.stage,
            "failure_type": classify(e.success, e.stage, e.stages),
            "failure_step": None if e.success else fstep,
            "failure_to_nearest_event": None if e.success else nearest_distance(fstep, ev),
            "uniform_step_to_nearest_event": None if e.success else nearest_distance(uniform_step, ev),
            "gripper_events": ev, "length": len(acts),
            "latency_ms_per_batched_call": 1000 * latency / max(calls, 1), "batch": len(seeds),
            "video_frames": frames[i] if i < len(frames) else None,
        })
    return out


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
    policy.binary_gripper = not cfg.raw_gripper
    policy.noise_scale = cfg.noise_scale
    return policy


def evaluate(cfg: EvalConfig, command: str | None = None) -> dict:
    """Evaluate cfg.ckpt on each task; writes OUT/results.json. `command` (default: this process's argv) is recorded."""
    from model import Policy
    if not Path(cfg.ckpt).is_file():
        raise ValueError(f"--ckpt {cfg.ckpt}: no such checkpoint file")
    policy = with_eval_options(Policy.load(cfg.ckpt, device=cfg.device), cfg)
    tasks = cfg.task or list(getattr(policy, "meta", {}).get("tasks", {}))  # default: the tasks it was trained on
    if not tasks:
        raise ValueError("no --task given and the checkpoint names no tasks")
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


def summarise(task, eps, wall):
    k, n = sum(e["success"] for e in eps), len(eps)
    fails = [e for e in eps if not e["success"]]
    near = [e["failure_to_nearest_event"] for e in fails if e["failure_to_nearest_event"] is not None]
    unif = [e["uniform_step_to_nearest_event"] for e in fails if e["uniform_step_to_nearest_event"] is not None]
    return {"gripper_events": sim.TASKS[task].gripper_events, "episodes": n, "successes": k,
            "success_rate": k / n, "wilson95": wilson(k, n),
            "failure_types": {t: sum(e["failure_type"] == t for e in eps) for t in ("motion-fail", "skill-fail", "timeout")},
            "failure_to_nearest_event_mean": float(np.mean(near)) if near else None,
            "uniform_step_to_nearest_event_mean": float(np.mean(unif)) if unif else None,
            "episodes_per_min": 60 * n / max(wall, 1e-9), "per_episode": eps}


# ============================================================================ charts (PIL only; no matplotlib)

PALETTE = [(90, 90, 90), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _canvas(w, h):
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (w, h), (255, 255, 255))
    return img, ImageDraw.Draw(img)


def bar_chart(path, groups: list, variants: list, values, lows, highs, title: str):
    """Grouped bars (groups x variants) of rates in [0, 1] with interval whiskers."""
    W, H, L, B = max(120 + 110 * len(groups), 60 + 110 * len(variants), 7 * len(title) + 60), 340, 50, 60
    img, d = _canvas(W, H)
    d.text((L, 6), title, fill=(0, 0, 0))
    y = lambda v: H - B - v * (H - B - 30)  # noqa: E731
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        d.line([L, y(v), W - 10, y(v)], fill=(225, 225, 225))
        d.text((8, y(v) - 6), f"{v:.2f}", fill=(0, 0, 0))
    bw = 90 / max(len(variants), 1)
    for gi, g in enumerate(groups):
        x0 = L + 10 + gi * 110
        d.text((x0, H - B + 6), g[:16], fill=(0, 0, 0))
        for vi in range(len(variants)):
            xa = x0 + vi * bw
            c = PALETTE[vi % len(PALETTE)]
            d.rectangle([xa, y(values[gi][vi]), xa + bw - 3, y(0)], fill=c)
            xm = xa + bw / 2 - 1
            d.line([xm, y(lows[gi][vi]), xm, y(highs[gi][vi])], fill=(0, 0, 0), width=1)
    for vi, v in enumerate(variants):
        d.rectangle([L + vi * 110, H - 22, L + vi * 110 + 10, H - 12], fill=PALETTE[vi % len(PALETTE)])
        d.text((L + vi * 110 + 14, H - 24), v[:14], fill=(0, 0, 0))
    img.save(path)


def scatter_chart(path, points: list, title: str, xlabel: str, ylabel: str,
                  empty_note="no conclusive points: every baseline is within 0.1 of floor or ceiling"):
    """points: (x, y, label, colour index). Axes fitted to the data, zero line drawn."""
    W, H, L, B = 520, 340, 60, 40
    img, d = _canvas(W, H)
    d.text((L, 6), title, fill=(0, 0, 0))
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs) - 0.5, max(xs) + 0.5
        y0, y1 = min(min(ys), 0) - 0.1, max(max(ys), 0) + 0.1
        X = lambda v: L + (v - x0) / (x1 - x0) * (W - L - 20)  # noqa: E731
        Y = lambda v: H - B - (v - y0) / (y1 - y0) * (H - B - 30)  # noqa: E731
        d.line([L, Y(0), W - 20, Y(0)], fill=(180, 180, 180))
        for v in np.linspace(y0, y1, 5):
            d.text((4, Y(v) - 6), f"{v:+.2f}", fill=(0, 0, 0))
        for v in sorted(set(xs)):
            d.text((X(v) - 3, H - B + 4), f"{v:g}", fill=(0, 0, 0))
        for x, yv, label, ci in points:
            c = PALETTE[ci % len(PALETTE)]
            d.ellipse([X(x) - 4, Y(yv) - 4, X(x) + 4, Y(yv) + 4], fill=c)
            d.text((X(x) + 6, Y(yv) - 6), label[:18], fill=c)
    else:  # say why the chart is empty rather than leave a blank plot
        d.text((L, H // 2), empty_note, fill=(160, 0, 0))
    d.text((W // 2 - 40, H - 18), xlabel, fill=(0, 0, 0))
    d.text((4, 18), ylabel, fill=(0, 0, 0))
    img.save(path)


# ============================================================================ compare

def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A ok, B fail) and c (A fail, B ok)."""
    from math import comb
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


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
    them. The paired test matches folder i of the variant with folder i of the baseline (a variant with a
    single folder, such as the base policy, with the baseline's first folder only, so that no episode counts
    twice), and episodes within a pair of folders by evaluation seed."""
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
    points, paired_json = [], {}
    if len(runs) > 1:
        lines += ["", f"Paired test against **{labels[0]}** (same evaluation seeds" + (
                  "; folder i against the baseline's folder i, a single-folder variant against the first only" if multi else "") + "): exact McNemar on discordant episodes (b = baseline succeeds only, c = variant succeeds only). "
                  "Relative gain = (variant - baseline) / baseline; 'inconclusive' where the baseline is within 0.1 of floor or ceiling.", "",
                  "| task | variant | pairs | b | c | p | relative gain |", "|---|---|---|---|---|---|---|"]
        for vi, (lab, res) in enumerate(zip(labels[1:], runs[1:]), start=1):
            m = min(len(runs[0]), len(res))
            if m > 1 and len(runs[0]) != len(res):
                raise ValueError(f"compare: {lab} has {len(res)} folders and {labels[0]} {len(runs[0])}: cannot pair them")
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
                if gain is not None:
                    points.append((events[t], gain, f"{lab}:{t}", vi))
                paired_json[lab][t] = {"pairs": n, "b": b, "c": c, "p": p, "relative_gain": gain}
                lines.append(f"| {t} | {lab} | {n} | {b} | {c} | {p:.3g} | {'inconclusive' if gain is None else f'{gain:+.2f}'} |")
            paired_json[lab]["all tasks"] = {"pairs": N, "b": B, "c": C, "p": mcnemar_exact(B, C)}
            lines.append(f"| all tasks | {lab} | {N} | {B} | {C} | {mcnemar_exact(B, C):.3g} | |")
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
    bar_chart(outp / "success.png", tasks, labels, [[x["success_rate"] for x in pooled[t]] for t in tasks],
              [[x["wilson95"][0] for x in pooled[t]] for t in tasks], [[x["wilson95"][1] for x in pooled[t]] for t in tasks],
              "success rate per task (Wilson 95% whiskers)")
    if len(runs) > 1:
        scatter_chart(outp / "gain_vs_events.png", points, f"relative gain over {labels[0]} vs gripper events per task",
                      "gripper events (expert)", "relative gain")
    return md


# ============================================================================ stage probe (the paper's qualitative analysis)

def probe(ckpt: str, task: str, seed: int, out: str, device="cpu") -> dict:
    """Roll out the policy once; at every step read the StaKe heads (which inference never uses) and plot the
    stage head's probability against the rollout's true gripper stage, and the keyframe head's error."""
    from model import Policy
    from PIL import Image, ImageDraw
    import torch
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
    W, H = max(560, 3 * T + 80), 320
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    X = lambda t: 60 + t * (W - 80) / max(T - 1, 1)  # noqa: E731
    d.text((60, 4), f"{task} seed {env.seed}: success={env.success}; stage head p(skill) vs true stage", fill=(0, 0, 0))
    for k in range(probs.shape[1]):
        y0 = 30 + k * 70
        Y = lambda v, y0=y0: y0 + 60 - 55 * v  # noqa: E731
        for t in range(T):  # true stage as a band
            if (true_stage[t, k] if probs.shape[1] == true_stage.shape[1] else true_stage[t].max()):
                d.rectangle([X(t), y0 + 5, X(t) + 3, y0 + 60], fill=(210, 225, 245))
        d.line([(X(t), Y(float(probs[t, k]))) for t in range(T)], fill=(214, 39, 40), width=2)
        d.text((4, y0 + 25), ["left", "right", "any"][k if probs.shape[1] > 1 else 2], fill=(0, 0, 0))
    y0 = 30 + probs.shape[1] * 70 + 10
    m = float(key_err.max()) + 1e-6
    d.text((4, y0), "keyframe |err|", fill=(0, 0, 0))
    d.line([(X(t), y0 + 70 - 65 * float(key_err[t]) / m) for t in range(T)], fill=(31, 119, 180), width=2)
    for t, _, kind in seg.events:
        d.line([X(t), 25, X(t), H - 10], fill=(44, 160, 44) if kind == "open" else (0, 0, 0))
    d.text((60, H - 14), "blue band: true skill stage; red: stage head p(skill); vertical lines: gripper events", fill=(80, 80, 80))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    agree = float(((probs > 0.5) == (true_stage[:, :probs.shape[1]] > 0.5 if probs.shape[1] == true_stage.shape[1]
                                      else true_stage.max(1, keepdims=True) > 0.5)).mean())
    return {"steps": T, "success": bool(env.success), "stage_agreement": agree,
            "keyframe_l1_mean": float(key_err.mean()), "events": seg.events}


# ============================================================================ the main job

def openloop(ckpt: str, folder: str, steps=(0, 5, 10, 20, 30, 45), episodes=10, device="cpu") -> dict:
    """Open-loop check on recorded episodes: the policy's chunk at step t against the demonstration's next
    actions. Per t: mean over episodes of the worst joint's error (rad), averaged over the executed steps, beside
    how far the demonstration moves over them. Error ~ motion at t = 0 means the first decision (which object,
    which arm) was not learned even on these episodes; later steps can be fit by continuing the motion."""
    import torch
    from model import Policy
    policy = Policy.load(ckpt, device=device)
    policy.binary_gripper = False  # a close one step late counts by how far it is, not as 1; as before
    paths = data.episode_paths(folder)[:episodes]
    if not paths:
        raise data.DataError(f"{folder}: no episode_*.npz files")
    eps, n, rows = [data.load_episode(p) for p in paths], policy.cfg.n_action_steps, {}
    for t in steps:
        err, move = [], []
        for ep in eps:
            if t + n > len(ep["action"]):
                continue
            obs = {"images": {c: ep["images"][c][t] for c in policy.cameras}, "qpos": ep["qpos"][t],
                   "prev_qpos": ep["qpos"][max(t - 1, 0)],
                   "instruction": ep["instruction"]}
            chunk = policy.predict_chunk([obs], generator=torch.Generator().manual_seed(t))[0][:n]  # (n, A)
            demo = ep["action"][t:t + n]
            err.append(float(np.abs(chunk - demo).max(1).mean()))
            move.append(float(np.abs(demo - ep["qpos"][t]).max(1).mean()))
        if err:
            rows[t] = {"error_rad": float(np.mean(err)), "demo_motion_rad": float(np.mean(move)), "episodes": len(err)}
    return {"ckpt": ckpt, "data": folder, "steps": rows}


def main_job(argv):
    """Generate a little data, train briefly, evaluate, print the table, write a video. Each step resumes:
    rerunning the command after an interruption continues where it stopped."""
    import subprocess
    p = argparse.ArgumentParser(prog="eval_sim.py main", description=main_job.__doc__)
    p.add_argument("--out", default="outputs/main", help="folder for data/, run/, eval/")
    p.add_argument("--task", default="lift_block")
    p.add_argument("--demos", type=int, default=40, help="demonstrations to record")
    p.add_argument("--steps", type=int, default=1500, help="training steps")
    p.add_argument("--preset", default="small")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    out = Path(a.out)
    py = sys.executable
    here = Path(__file__).resolve().parent
    t0 = time.time()

    def run(cmd):
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=here)

    run([py, "data.py", "generate", "--task", a.task, "--episodes", str(a.demos), "--out", str(out / "data"),
         "--workers", str(a.workers)])
    t1 = time.time()
    run([py, "train.py", "--data", str(out / "data"), "--out", str(out / "run"), "--steps", str(a.steps),
         "--preset", a.preset, "--seed", "0", "--resume"])
    t2 = time.time()
    cfg = EvalConfig(ckpt=str(out / "run" / "ckpt.pt"), task=[a.task], episodes=a.episodes, out=str(out / "eval"),
                     video=1, workers=a.workers, batch=max(1, -(-a.episodes // a.workers)))
    evaluate(cfg)
    t3 = time.time()
    print(compare([str(out / "eval")], str(out / "report")))
    print(f"minutes: data {(t1 - t0) / 60:.1f}, train {(t2 - t1) / 60:.1f}, eval {(t3 - t2) / 60:.1f}; "
          f"video: {sorted((out / 'eval').glob('*.mp4'))[0] if list((out / 'eval').glob('*.mp4')) else 'none'}")


# ============================================================================ CLI

def _parse_config(argv) -> EvalConfig:
    p = argparse.ArgumentParser(prog="eval_sim.py", description=__doc__.split("\n\n")[0])
    for f in fields(EvalConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f"(default: {f.default if not callable(f.default_factory) else f.default_factory()})"
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help=helptext)
        elif f.type in ("list", list):
            p.add_argument(flag, nargs="+", action="extend", default=[], help=helptext)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=helptext)
    a = p.parse_args(argv)
    return EvalConfig(**{f.name: getattr(a, f.name) for f in fields(EvalConfig)})


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
            p.add_argument("--out", default="", help="JSON file to write")
            a = p.parse_args(argv[1:])
            res = {"command": "python eval_sim.py " + " ".join(argv), "git_revision": data.git_revision()} | \
                openloop(a.ckpt, a.data, episodes=a.episodes)
            for t, r in res["steps"].items():
                print(f"t={t:3d}  open-loop error {r['error_rad']:.3f} rad  (the demonstration moves {r['demo_motion_rad']:.3f})")
            if a.out:
                data.atomic_write_bytes(Path(a.out), lambda f: f.write(json.dumps(res, indent=1).encode()))
        elif argv[:1] == ["main"]:
            main_job(argv[1:])
        else:
            evaluate(_parse_config(argv))
    except (ValueError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
