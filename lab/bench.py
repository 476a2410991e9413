"""Benchmarks: figures of this machine's speed, each from one run (ratios, not timed tests).

  python lab/bench.py eval --ckpt RUN/ckpt.pt [--task T]       # episodes/min, cameras at every step vs when read
  python lab/bench.py train [--presets tiny small] [--json results/bench/train_cpu.json]   # training samples/s
  python lab/bench.py data [--tasks T ...] [--out results/bench_data.json]   # simulation and recording speed
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""): sys.path[0] = str(Path(__file__).resolve().parents[1])   # python lab/bench.py

import data  # noqa: E402
from data import _attempt, _worker_env, save_episode  # noqa: E402
from eval_sim import EvalConfig, _envs, eval_seeds, rollout_batch  # noqa: E402


# ============================================================================ evaluation speed

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


# ============================================================================ training speed (was train.py bench)

def train_bench(argv=None) -> dict:
    """Training samples/s on this machine, in one run: the recipe's policy on a frozen grounding front end (the
    `small` front end, 3 cameras at 96 px) with its output computed from the images every step and cached,
    and the from-scratch presets; plus inference ms per chunk. Synthetic data unless --data is given."""
    import copy
    import torch
    import dataset
    from model import PRESETS, VISION_PREFIXES, ModelConfig, Normalizer, Policy, Tokenizer, train_tokenizer
    from train import (Options, cpu_threads, param_counts, ema_pairs_of, ema_update, language, make_optimizer, new_model,
                       sample_noise_time, train_step)
    ap = argparse.ArgumentParser(prog="bench.py train", description=train_bench.__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="*", default=["tiny", "small"], help="from-scratch presets to time too")
    ap.add_argument("--data", nargs="+", default=None, help="episode folders (default: synthetic, 3 cameras 96 px)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="at least this many timed steps (after 2 warm-up)")
    ap.add_argument("--seconds", type=float, default=5.0, help="...and at least this long per measurement")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: train.cpu_threads)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or cpu_threads())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tmp = tempfile.TemporaryDirectory()
    folders = args.data
    if folders is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from synthetic import make_dataset
        folders = [str(make_dataset(Path(tmp.name) / "synthetic", n_episodes=4, T=100, image_size=(96, 96),
                                    cameras=("top", "left_wrist", "right_wrist")))]

    def rate(fn):  # calls/s of fn, timed over at least --steps calls and --seconds
        for _ in range(2):
            fn()
        sync()
        n, t0 = 0, time.perf_counter()
        while n < args.steps or time.perf_counter() - t0 < args.seconds:
            fn()
            n += 1
            sync()
        return n / (time.perf_counter() - t0)

    D = dataset.load_folders(folders)
    tok = Tokenizer(train_tokenizer(sorted(set(D["texts"])), PRESETS["small"]["vocab_size"]))
    dims = dict(action_dim=D["action"].shape[1], state_dim=D["qpos"].shape[1], n_cameras=len(D["cameras"]),
                image_size=tuple(D["meta"]["image_size"]), vocab_size=tok.vocab_size, n_stage=D["stage"].shape[1],
                keyframe_head=True)
    recipe = ModelConfig.from_preset("small", vit_stem="conv", vit_pos="sincos", keypoints=16, grounded=2,
                                     grounded_only=True, ground_mean=(0.0, 0.0), ground_std=(1.0, 1.0), **dims)
    runs = {"recipe, front end every step": (recipe, False), "recipe, front end cached": (recipe, True),
            **{f"{p} from scratch": (ModelConfig.from_preset(p, **dims), False) for p in args.presets}}
    dev_name = (torch.cuda.get_device_name() if device.type == "cuda" else
                f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    res = dict(command="python lab/bench.py train " + " ".join(argv or []), git=data.git_revision(), device=dev_name,
               batch_size=args.batch_size, runs={})
    print(f"{dev_name} | batch {args.batch_size}\n{'run':30s} {'params':>8s} {'train/s':>9s} {'infer ms':>9s}")
    opts, stats = Options(data=folders, batch_size=args.batch_size, shift=0), dataset.compute_stats(D)
    for name, (cfg, cached) in runs.items():
        model = new_model(cfg, 0).to(device)
        if cfg.keypoints:  # the recipe: the front end frozen
            for n, p in model.named_parameters():
                p.requires_grad_(not n.startswith(VISION_PREFIXES))
        optimizer, norm, lang = make_optimizer(model, opts), Normalizer(stats, device), language(tok, D["texts"], cfg.lang_len)
        ema = copy.deepcopy(model).requires_grad_(False)
        pairs = ema_pairs_of(ema, model)
        Dr = {**D, "ground": dataset.grounded_positions(model, D, folders, lang, device)} if cached else D
        g = torch.Generator().manual_seed(0)
        def step():  # as the training loop: batch, noise, loss, update, EMA
            batch = dataset.make_batch(Dr, lang, norm, g, opts.batch_size, cfg, 0, device)
            train_step(model, optimizer, batch, *sample_noise_time(g, opts.batch_size, cfg.horizon, cfg.action_dim,
                                                                   device), opts, device.type == "cuda")
            ema_update(pairs, opts.ema_decay)
        obs = {"images": {c: D["images"][0, i].numpy() for i, c in enumerate(D["cameras"])},
               "qpos": D["qpos"][0].numpy(), "instruction": D["texts"][0]}
        policy = Policy(model, tok, stats, D["meta"], device)
        infer_ms = 1000 / rate(lambda: policy.predict_chunk([obs]))
        model.train()
        r = dict(params=param_counts(model)["total"], train_samples_per_s=args.batch_size * rate(step), infer_ms=infer_ms)
        res["runs"][name] = r
        print(f"{name:30s} {r['params'] / 1e6:7.2f}M {r['train_samples_per_s']:9.1f} {infer_ms:9.1f}")
    a, b = res["runs"]["recipe, front end cached"], res["runs"]["recipe, front end every step"]
    res["cached_over_uncached"] = a["train_samples_per_s"] / b["train_samples_per_s"]
    print(f"cached front end: {res['cached_over_uncached']:.1f}x the samples/s of running it every step")
    if args.json:
        write_json(args.json, res)
        print(f"wrote {args.json}")
    return res


# ============================================================================ recording speed (was data.py bench)

def data_bench(tasks, episodes=1, cameras=None, image_size=(96, 96)) -> dict:
    """Per task: physics steps/s, ms per rendered frame per camera, episodes recorded per minute, and the
    ratio of recording time (expert + physics + render + compression + write) to the floor (physics + render)."""
    from world import experts
    from world import sim
    import world
    rows = {}
    for task in tasks:
        suite = world.suite_of(task)
        cams = list(cameras or suite.CAMERAS)
        env = world.make_env(task, cameras=cams, image_size=image_size, render=True)
        t_phys = t_render = 0.0
        n_steps = n_frames = 0
        t_rec = 0.0
        for s in range(episodes):
            # instrumented rollout: time physics and rendering separately
            env.reset(s)
            x = experts.make_expert(env)
            for act in x.actions():
                t0 = time.perf_counter()
                for c in cams:
                    env.render(c)
                t1 = time.perf_counter()
                env.apply(act)  # physics only; the renders were timed above
                t2 = time.perf_counter()
                t_render += t1 - t0
                t_phys += t2 - t1
                n_steps += 1
                n_frames += len(cams)
            # the real recording path: expert check + recorded rollout + compressed atomic write
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                _worker_env.clear()
                _, ok, _, _, ep = _attempt((task, s, cams, tuple(image_size), False))
                if ep is not None:
                    save_episode(Path(d) / "ep.npz", ep)
                t_rec += time.perf_counter() - t0
        rows[task] = {"physics_steps_per_s": n_steps * sim.SUBSTEPS / t_phys,
                      "ms_per_frame_per_camera": 1000 * t_render / n_frames,
                      "episodes_per_min": 60 * episodes / t_rec,
                      "record_over_floor": t_rec / (t_phys + t_render),
                      "control_steps_per_episode": n_steps / episodes}
    return rows


# ============================================================================ CLI

def write_json(path: str, doc: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data.atomic_write_bytes(Path(path), lambda f: f.write(json.dumps(doc, indent=1).encode()))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    record = {"command": "python lab/bench.py " + " ".join(argv)}
    try:
        if argv[:1] == ["eval"]:
            p = argparse.ArgumentParser(prog="bench.py eval", description=bench.__doc__.split("\n")[0])
            p.add_argument("--ckpt", required=True)
            p.add_argument("--task", default="lift_block")
            p.add_argument("--episodes", type=int, default=10)
            p.add_argument("--batch", type=int, default=10)
            p.add_argument("--json", default="", help="write the figures here")
            a = p.parse_args(argv[1:])
            res = record | {"git_revision": data.git_revision(), **bench(a.ckpt, a.task, a.episodes, a.batch)}
            if a.json:
                write_json(a.json, res)
        elif argv[:1] == ["train"]:
            train_bench(argv[1:])
        elif argv[:1] == ["data"]:
            import world
            from world import sim
            p = argparse.ArgumentParser(prog="bench.py data", description=data_bench.__doc__.split("\n")[0])
            p.add_argument("--tasks", nargs="+", default=None, help="default: the bimanual suite (twin tasks: franka_*)")
            p.add_argument("--episodes", type=int, default=1)
            p.add_argument("--out", default=None, help="JSON file to write")
            a = p.parse_args(argv[1:])
            tasks = a.tasks or list(sim.TASKS)
            if unknown := [t for t in tasks if t not in world.all_tasks()]:
                raise data.DataError(f"unknown task(s) {unknown}; known tasks: {', '.join(world.all_tasks())}")
            rep = data_bench(tasks, a.episodes)
            print(f"{'task':12s} {'physics steps/s':>16s} {'ms/frame/cam':>13s} {'episodes/min':>13s} {'record/floor':>13s}")
            for t, r in rep.items():
                print(f"{t:12s} {r['physics_steps_per_s']:16.0f} {r['ms_per_frame_per_camera']:13.1f} "
                      f"{r['episodes_per_min']:13.1f} {r['record_over_floor']:13.2f}")
            if a.out:
                write_json(a.out, record | {"git_revision": data.git_revision(), "machine":
                           f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "results": rep})
        else:
            print(__doc__.strip())
            return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    except (ValueError, data.DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
