"""Closed-loop evaluation in the MuJoCo scenes, with failure attribution.

  python eval_sim.py --ckpt RUN/ckpt.pt --task lift_block --episodes 100 --out DIR [--video 2] [--workers 2]
  python eval_sim.py --remote ws://HOST:8000 ...      # the policy served by `python -m interop.server RUN/ckpt.pt`

Comparisons, the StaKe probe, the open-loop check and the benchmark (formerly eval_sim.py compare / probe /
openloop / bench): lab/diagnostics.py.

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

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import data
import segment
from world import sim, words
import world
from data import opt
from stats import wilson  # Wilson 95% interval (shared with eval_real.py)


@dataclass
class EvalConfig:
    ckpt: str = opt("", "checkpoint written by train.py (RUN/ckpt.pt)")
    remote: str = opt("", "ws://HOST:PORT: the policy served there (python -m interop.server CKPT), in place of --ckpt")
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
    instruction: str = opt("", "your own words for every episode, in place of the layout's instruction (results.json "
                           "keeps both); {color}, {pad}, {c0}, {c1}, {c2} are filled from each layout, as the "
                           "task's phrasings are (sim.instruction_fields). Policies follow their training phrasings best")
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
        if self.instruction and self.shuffle_instructions:
            raise ValueError("--instruction and --shuffle-instructions each replace the instruction: give one")
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
    if hasattr(policy, "seed_noise"):  # remote: the server draws it from Generator().manual_seed(seeds[0])
        policy.seed_noise(int(seeds[0]))
    elif hasattr(policy, "device"):  # the flow's noise is seeded by the batch's first seed: reruns repeat exactly
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
    if (cfg.ckpt, cfg.remote, cfg.device) not in _worker_policy:  # a worker serves one evaluate() call: load once
        _worker_policy.clear()
        _worker_policy[cfg.ckpt, cfg.remote, cfg.device] = load_policy(cfg)
    policy = with_eval_options(_worker_policy[cfg.ckpt, cfg.remote, cfg.device], cfg)
    return rollout_batch(policy, task, seeds, cfg, instructions, record_video)


_worker_policy = {}


def load_policy(cfg: EvalConfig):
    """cfg.ckpt's Policy in this process, or the one served at cfg.remote (interop/client.py RemotePolicy)."""
    if cfg.remote and cfg.ckpt:
        raise ValueError("--ckpt and --remote each name the policy: give one")
    if cfg.remote:
        from interop.client import RemotePolicy
        return RemotePolicy(cfg.remote)
    from model import Policy
    if not Path(cfg.ckpt).is_file():
        raise ValueError(f"--ckpt {cfg.ckpt}: no such checkpoint file")
    return Policy.load(cfg.ckpt, device=cfg.device)


def with_eval_options(policy, cfg: EvalConfig):
    """The evaluation's settings of how a Policy acts (one place for the main process and the workers)."""
    policy.noise_scale = cfg.noise_scale
    return policy


def evaluate(cfg: EvalConfig, command: str | None = None) -> dict:
    """Evaluate cfg.ckpt on each task; writes OUT/results.json. `command` (default: this process's argv) is recorded."""
    policy = with_eval_options(load_policy(cfg), cfg)
    trained = list(policy.meta.get("tasks", {}))
    tasks = cfg.task or trained  # default: the tasks it was trained on
    if not tasks:
        raise ValueError("no --task given and the checkpoint names no tasks")
    if unseen := [t for t in tasks if t not in trained]:
        raise ValueError(f"--task {' '.join(unseen)}: {cfg.ckpt or cfg.remote} was trained on {', '.join(trained) or 'no named task'}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": command or "python " + " ".join(sys.argv), "git_revision": data.git_revision(),
               "config": asdict(cfg), "tasks": {}}
    t_start = time.time()
    pool = None  # one pool for all tasks: each worker imports torch once, not once per task
    if cfg.workers > 1 and cfg.episodes > cfg.batch:
        import multiprocessing as mp
        pool = mp.get_context("spawn").Pool(cfg.workers, initializer=data.quiet_worker)
    try:
        for task in tasks:
            _evaluate_task(cfg, task, policy, pool, out, results)
    finally:
        if pool is not None:
            pool.terminate()
    results["wall_s"] = time.time() - t_start
    data.atomic_write_bytes(out / "results.json", lambda f: f.write(json.dumps(results, indent=1).encode()))
    return results


def own_words(text: str, task: str, seeds: list) -> list:
    """--instruction for each seed, its {fields} filled from that seed's layout (the objects it names)."""
    fields = [sim.instruction_fields(sim.TASKS[task].layout(s)) for s in seeds]
    try:
        texts = [text.format(**f) for f in fields]
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"--instruction {text!r}: {task}'s layouts fill {{{'}, {'.join(fields[0]) or 'nothing'}}} "
                         f"(not {err})") from None
    # an object that is not there gets this answer, not a reach for whatever the policy makes of the words
    if absent := {s: a for s, t in zip(seeds, texts) if (a := words.absent_colors(t, task, s))}:
        s, a = next(iter(absent.items()))
        raise ValueError(f"--instruction {text!r} asks for a {' and '.join(a)} object, which is not on the table in "
                         f"{len(absent)} of {len(seeds)} {task} layouts (first: seed {s}); name the layout's own "
                         f"objects with {{{'}, {'.join(fields[0]) or 'nothing'}}}")
    return texts


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
    instructions = shuffled_instructions(task, seeds, cfg.seed) if cfg.shuffle_instructions else \
        own_words(cfg.instruction, task, seeds) if cfg.instruction else None
    jobs = []
    for b in range(0, len(seeds), cfg.batch):
        sl = slice(b, b + cfg.batch)
        jobs.append((cfg, task, seeds[sl], instructions[sl] if instructions else None,
                     max(0, min(cfg.video - b, cfg.batch))))
    t0, parts, bar = time.time(), [], data.Progress(len(seeds), f"{task} episodes")
    done = pool.imap(_worker, jobs) if pool is not None and len(jobs) > 1 else \
        (rollout_batch(policy, task, j[2], cfg, j[3], j[4]) for j in jobs)
    for part in done:  # in order: the episodes' list is the seeds' order
        parts.append(part)
        bar.update(len(part), f"successes {sum(e['success'] for p in parts for e in p)}")
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


# ============================================================================ CLI

def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        evaluate(data.parse_options(EvalConfig, argv, "eval_sim.py", __doc__.split("\n\n")[0]))
    except (ValueError, data.DataError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\neval_sim.py: interrupted; nothing is written before the end, rerun the same command to evaluate",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
