"""Recovery data for long-horizon tasks: the closed-loop expert (world/experts.py closed_loop) takes over a
policy's rollouts, and the policy is trained again on the demonstrations plus those expert episodes (DAgger-style
rounds, with the expert taking over instead of labelling every visited state).

    python lab/dagger.py experts --task place_block --episodes 100      # the expert from perturbed starts
    python lab/dagger.py run --task place_block --rounds 3              # rounds on the recipe's policy

`experts`: the scripted plan runs for a random number of steps, then a perturbation (none, the hands open, the
free objects shoved 2-5 cm and turned), then closed_loop finishes the task; success per perturbation.

`run`, round r = 1 .. ROUNDS: the policy of round r-1 (round 0: `python lab/recipe.py TASK`) acts on the
demonstrations' own layouts for a random number of steps, then the expert takes over; each successful takeover
is recorded from the takeover on (OUT/round_r/data). The policy of round r trains with the recipe's settings on
the demonstrations and every round's takeovers so far (OUT/round_r/policy), and is evaluated as the recipe
evaluates (OUT/round_r/eval). Every stage leaves done.json; a rerun skips what is done and resumes the rest.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""): sys.path[0] = str(Path(__file__).resolve().parents[1])   # python lab/dagger.py

import numpy as np  # noqa: E402

import data  # noqa: E402
from data import opt  # noqa: E402

PERTURBATIONS = ("none", "open", "shove")


def perturb(env, kind: str, rng) -> None:
    """Shove: every free object that no hand holds moves 2-5 cm in a random direction and turns up to 0.5 rad."""
    if kind != "shove":
        return
    import mujoco
    from world.sim import yaw_quat
    for name, a in env.obj_qadr.items():
        p = env.obj_pos(name)
        if env.grasped_by(name) or abs(p[1]) > 0.45:  # held, or parked off the table
            continue
        ang, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.05)
        env.data.qpos[a:a + 2] = p[:2] + r * np.array([np.cos(ang), np.sin(ang)])
        env.data.qpos[a + 3:a + 7] = yaw_quat(env.obj_yaw(name) + rng.uniform(-0.5, 0.5))
        env.data.qvel[env.model.jnt_dofadr[mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_JOINT, name)]:][:6] = 0
    mujoco.mj_forward(env.model, env.data)


def expert_from(env, steps_cap: int, record: bool = False, open_hands: bool = False):
    """closed_loop from env's current state until success or steps_cap more steps. Returns (success, episode or
    None): the episode holds the frames from the takeover on, as data.py records them."""
    from world import experts
    x = experts.make_expert(env)
    x.GRASP_YAW = False  # the recipes' demonstrations grasp along the natural finger direction (--grasp-natural)
    experts.sync(x)
    if open_hands:
        for a in env.arms:
            x.grip[a] = 1.0
    obs = env.observe(render=record)
    ep = experts.rollout(env, obs, experts.closed_loop(x), record, stop=lambda t: t >= steps_cap or env.success)
    return bool(env.success), ep


def perturbed_start(task: str, seed: int, kind: str, env=None) -> dict:
    """The scripted plan for a random number of steps (the seed's own draw), the perturbation, then closed_loop."""
    import world
    from world import experts
    env = env or world.make_env(task, render=False)
    rng = np.random.default_rng([seed, PERTURBATIONS.index(kind)])
    env.reset(seed)
    x = experts.make_expert(env)
    x.GRASP_YAW = False
    k = int(rng.integers(0, int(env.task.max_steps / 1.5)))
    for t, act in enumerate(x.actions()):
        if t >= k or env.success:
            break
        env.step(act, render=False)
    perturb(env, kind, rng)
    ok, _ = expert_from(env, 2 * env.task.max_steps, open_hands=kind == "open")
    return {"seed": seed, "kind": kind, "takeover_step": k, "success": ok, "steps": env.t}


@dataclass
class ExpertOptions:
    """The closed-loop expert from perturbed starts (no policy)."""
    task: str = opt("place_block", "task")
    episodes: int = opt(100, "seeds per perturbation (held-out evaluation seeds)")
    out: str = opt("", "results JSON (default: print only)")

    def __post_init__(self):
        from world import experts
        if self.task not in experts.NEXT:
            raise ValueError(f"--task {self.task}: no closed-loop expert; there is one for {', '.join(experts.NEXT)}")
        if self.episodes < 1:
            raise ValueError("--episodes must be >= 1")


def measure_experts(o: ExpertOptions, command: str) -> dict:
    import world
    from world import sim
    env = world.make_env(o.task, render=False)
    t0 = time.time()
    seeds = [sim.EVAL_SEED_OFFSET + i for i in range(o.episodes)]
    rows = [perturbed_start(o.task, s, k, env) for k in PERTURBATIONS for s in seeds]
    res = {"command": command, "git_revision": data.git_revision(), "task": o.task, "episodes": o.episodes,
           "success": {k: sum(r["success"] for r in rows if r["kind"] == k) / o.episodes for k in PERTURBATIONS},
           "wall_s": round(time.time() - t0, 1), "rows": rows}
    print(f"{o.task}: closed-loop expert success from perturbed starts over {o.episodes} seeds: " +
          ", ".join(f"{k} {v:.2f}" for k, v in res["success"].items()) + f"  ({res['wall_s']} s)")
    if o.out:
        data.atomic_write_bytes(Path(o.out), lambda f: f.write(json.dumps(res, indent=1).encode()))
    return res

@dataclass
class TakeoverOptions:
    """The expert takes over a policy's rollouts on the demonstrations' layouts; its successful takeovers are
    recorded from the takeover on, in the demonstrations' format (cameras, image size)."""
    ckpt: str = opt("", "the policy's checkpoint", required=True)
    data: str = opt("", "its demonstrations (their layouts, cameras and image size)", required=True)
    out: str = opt("", "folder for the takeover episodes (resumes an unfinished one)", required=True)
    takeovers: int = opt(2, "takeovers per layout")
    latest: float = opt(0.7, "takeover steps are drawn uniformly from 1 .. latest x the task's step limit")
    noise_scale: float = opt(0.0, "the policy's flow noise, as its recipe evaluates it")
    perturb: str = opt("none", "at the takeover: none, open (the hands) or shove (the free objects 2-5 cm): new "
                       "object positions near the demonstrations' layouts", choices=PERTURBATIONS)
    seed: int = opt(0, "seed of the takeover steps' draws")

    def __post_init__(self):
        if self.takeovers < 1 or not 0 < self.latest <= 1:
            raise ValueError("--takeovers must be >= 1 and --latest in (0, 1]")


def policy_until(policy, env, seed: int, k: int, generator) -> bool:
    """Reset env to `seed` and let the policy act k steps (cameras only where it reads them). Returns whether
    the task was already done."""
    obs = env.reset(seed)
    n_exec = max(1, min(policy.n_action_steps, policy.horizon))
    chunk = None
    for t in range(k):
        if t % n_exec == 0:
            chunk = policy.predict_chunk([obs], generator=generator)[0]  # (H, A)
        obs = env.step(chunk[t % n_exec], render=(t + 1) % n_exec == 0 or t + 1 == k)
        if env.success:
            return True
    return False


def takeover(o: TakeoverOptions, command: str) -> dict:
    import torch
    import world
    from model import Policy
    meta = data.load_meta(o.data)
    seeds = meta.get("generation_stats", {}).get("seeds")
    task = meta["generation"]["task"] if "generation" in meta else None
    if not seeds or not task:
        raise ValueError(f"{o.data}: not a data.py generate folder (no task or layout seeds in meta.json)")
    if not Path(o.ckpt).is_file():
        raise ValueError(f"--ckpt {o.ckpt}: no such checkpoint file")
    policy = Policy.load(o.ckpt)
    policy.noise_scale = o.noise_scale
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = {"task": task, "takeover": {"ckpt": str(o.ckpt), "data": str(o.data), "takeovers": o.takeovers,
                                      "latest": o.latest, "noise_scale": o.noise_scale, "seed": o.seed,
                                      **({"perturb": o.perturb} if o.perturb != "none" else {})}}
    was = data.load_meta(out) if (out / "meta.json").is_file() else None
    if was and was.get("generation") != gen:
        raise ValueError(f"{out}: holds takeovers made with other settings; choose a new folder")
    rows = (was or {}).get("takeovers", [])
    env = world.make_env(task, cameras=meta["cameras"], image_size=tuple(meta["image_size"]))
    limit = env.task.max_steps
    rng = np.random.default_rng([o.seed, len(seeds)])
    draws = [(s, int(rng.integers(1, int(o.latest * limit) + 1))) for s in seeds for _ in range(o.takeovers)]
    base = data.make_meta([task], meta["cameras"], tuple(meta["image_size"]))
    t0 = time.time()
    for i, (s, k) in enumerate(draws):
        if i < len(rows):
            continue
        gen_i = torch.Generator().manual_seed(o.seed * 1_000_003 + i)
        row = {"seed": s, "takeover_step": k, "policy_done": policy_until(policy, env, s, k, gen_i)}
        if not row["policy_done"]:
            perturb(env, o.perturb, np.random.default_rng([o.seed, i]))
            row["expert_success"], ep = expert_from(env, 2 * limit, record=True, open_hands=o.perturb == "open")
            if row["expert_success"]:
                row["episode"], row["frames"] = sum("episode" in r for r in rows), len(ep["action"])
                data.save_episode(out / f"episode_{row['episode']:06d}.npz", ep)
        rows.append(row)
        data.save_meta(out, base | {"generation": gen, "takeovers": rows})
    taken = [r for r in rows if not r["policy_done"]]
    res = {"takeovers": len(rows), "policy_done_first": len(rows) - len(taken),
           "expert_success": sum(r["expert_success"] for r in taken) / max(len(taken), 1),
           "episodes": sum("episode" in r for r in rows), "frames": sum(r.get("frames", 0) for r in rows)}
    data.save_meta(out, base | {"generation": gen, "takeovers": rows, "summary": res})
    print(f"{task}: {res['takeovers']} takeovers of {o.ckpt} ({res['policy_done_first']} done before the takeover); "
          f"the expert finished {res['expert_success']:.2f} of the rest: {res['episodes']} episodes, "
          f"{res['frames']} expert frames ({time.time() - t0:.0f} s)")
    return res



def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python lab/dagger.py " + " ".join(argv)
    try:
        if argv[:1] == ["experts"]:
            measure_experts(data.parse_options(ExpertOptions, argv[1:], "dagger.py experts"), command)
        elif argv[:1] == ["takeover"]:
            takeover(data.parse_options(TakeoverOptions, argv[1:], "dagger.py takeover"), command)
        else:
            raise ValueError("give a subcommand: experts or takeover")
    except (ValueError, FileNotFoundError) as e:
        print(f"dagger.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
