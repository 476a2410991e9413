"""Demonstrations: the episode format, loading, and the `data.py` CLI.

Episode format (one folder per dataset):
  DIR/meta.json               fps, dimension names, gripper indices and convention, cameras, image size, tasks;
                              optionally "segment": segment.py's settings for this data (segment.settings)
  DIR/episode_000000.npz      images/<camera> (T,H,W,3) uint8, qpos (T,D) float32, action (T,A) float32,
                              instruction (str), task (str), seed (int)
The format is generic in dimensions: meta.json names every qpos / action dimension, so a single-arm
robot with 8-D actions uses the same files as the 14-D bimanual scene.
"""
from __future__ import annotations

import dataclasses
import sys
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

EPISODE_KEYS = ("qpos", "action", "instruction", "task", "seed")
META_KEYS = ("fps", "action_names", "qpos_names", "gripper_indices", "gripper_convention",
             "cameras", "image_size", "tasks")


class DataError(ValueError):
    """Bad data on disk or bad arguments; the message names the file and the key."""


# ----------------------------------------------------------------------------- writing (atomic)

def atomic_write_bytes(path: Path, write_fn) -> None:
    """Write via a temporary file in the same folder, then rename: a kill leaves no half file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_episode(path: Path, episode: dict) -> None:
    arrays = {f"images/{cam}": img for cam, img in episode["images"].items()}
    arrays["qpos"] = np.asarray(episode["qpos"], np.float32)
    arrays["action"] = np.asarray(episode["action"], np.float32)
    arrays["instruction"] = np.array(episode["instruction"])
    arrays["task"] = np.array(episode["task"])
    arrays["seed"] = np.array(int(episode["seed"]), np.int64)
    if episode.get("positions") is not None:  # the simulator's (x, y) of the named objects (world.located)
        arrays["positions"] = np.asarray(episode["positions"], np.float32)
        arrays["position_roles"] = np.array(list(episode["position_roles"]))
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))


def save_meta(folder: Path, meta: dict) -> None:
    atomic_write_bytes(Path(folder) / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


# ----------------------------------------------------------------------------- reading (validated)

def load_episode(path) -> dict:
    """Load one episode as {'images': {cam: (T,H,W,3) uint8}, 'qpos', 'action', 'instruction', 'task', 'seed'},
    plus 'positions' (T, 2R) and 'position_roles' (R names) where the simulator recorded them.

    Raises DataError naming the file and the key when something is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such episode file")
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except Exception as e:  # zip errors, truncated files, pickled objects (numpy's own message would advise
        # allow_pickle=True, which is unsafe for a file of unknown origin and never what an episode needs)
        raise DataError(f"{path}: not a valid episode file (cannot be read as an .npz of arrays: "
                        f"{type(e).__name__})") from None
    for k in EPISODE_KEYS:
        if k not in raw:
            raise DataError(f"{path}: missing key '{k}' (has {sorted(raw)})")
    images = {k.split("/", 1)[1]: v for k, v in raw.items() if k.startswith("images/")}
    qpos, action = raw["qpos"], raw["action"]
    if qpos.ndim != 2 or action.ndim != 2:
        raise DataError(f"{path}: 'qpos' and 'action' must be (T, D); got {qpos.shape} and {action.shape}")
    T = len(action)
    if T == 0:
        raise DataError(f"{path}: key 'action' is empty (T = 0)")
    if len(qpos) != T:
        raise DataError(f"{path}: 'qpos' has {len(qpos)} steps but 'action' has {T}")
    for name, arr in (("qpos", qpos), ("action", action)):
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: key '{name}' holds NaN or inf")
    for cam, img in images.items():
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != T or img.shape[-1] != 3:
            raise DataError(f"{path}: key 'images/{cam}' must be ({T}, H, W, 3) uint8; got {img.shape} {img.dtype}")
    ep = {"images": images, "qpos": qpos.astype(np.float32), "action": action.astype(np.float32),
          "instruction": str(raw["instruction"]), "task": str(raw["task"]), "seed": int(raw["seed"])}
    if "positions" in raw:  # optional: recorded in simulation only (train.py --positions simulator)
        pos, roles = raw["positions"], [str(r) for r in raw.get("position_roles", [])]
        if pos.shape != (T, 2 * len(roles)) or not np.isfinite(pos).all():
            raise DataError(f"{path}: 'positions' must be ({T}, 2 x {len(roles)} roles) and finite; got {pos.shape}")
        ep |= {"positions": pos.astype(np.float32), "position_roles": roles}
    return ep


def load_meta(folder) -> dict:
    """Load and check DIR/meta.json; DataError names the file and the missing or malformed key."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise DataError(f"{path}: missing (is {folder} an episode folder made by `data.py generate`?)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    for k in META_KEYS:
        if k not in meta:
            raise DataError(f"{path}: missing key '{k}'")
    A = len(meta["action_names"])
    bad = [i for i in meta["gripper_indices"] if not (0 <= int(i) < A)]
    if not meta["gripper_indices"] or bad:
        raise DataError(f"{path}: key 'gripper_indices' = {meta['gripper_indices']} must name action dimensions in [0, {A})")
    return meta


def episode_paths(folder) -> list[Path]:
    return sorted(Path(folder).glob("episode_*.npz"))


# ----------------------------------------------------------------------------- generation

def make_meta(tasks: list[str], cameras, image_size) -> dict:
    from world import sim
    import world
    suite = world.suite_of(tasks[0])
    if suite is not sim:  # another robot's suite (twin.py) writes its own layout
        return suite.make_meta(tasks, cameras, image_size)
    return {
        "format_version": 1,
        "robot": "bimanual_6dof",
        "fps": sim.FPS,
        "action_names": sim.ACTION_NAMES,
        "qpos_names": sim.ACTION_NAMES,
        "gripper_indices": sim.GRIPPER_INDICES,
        "gripper_convention": "normalised opening: 1 = open, 0 = closed (action: commanded; qpos: measured)",
        "arms": list(sim.ARMS),
        "cameras": list(cameras),
        "image_size": list(image_size),
        "tasks": {t: {"gripper_events": sim.TASKS[t].gripper_events, "arms": list(sim.TASKS[t].arms), "both_arms": sim.TASKS[t].both_arms,
                      "max_steps": sim.TASKS[t].max_steps, "description": sim.TASKS[t].description}
                  for t in tasks},
    }


_worker_env = {}


def _attempt(args):
    """Run the expert once (in a worker); returns (seed, success, stage, steps, episode or None)."""
    from world import experts
    import world
    task, seed, cameras, image_size, grasp_natural = args
    key = (task, tuple(cameras), tuple(image_size))
    if key not in _worker_env:
        _worker_env.clear()
        _worker_env[key] = world.make_env(task, cameras=cameras, image_size=image_size, render=True)
    env = _worker_env[key]
    # One recorded pass; a failed attempt's frames are dropped (experts fail rarely, so re-running a
    # successful seed to record it would cost more than rendering the odd failure).
    ok, stage, steps, ep = experts.run_expert(task, seed, env, record=True, grasp_natural=grasp_natural)
    return seed, ok, stage, steps, ep if ok else None


class Progress:
    """Progress on stderr (no dependency): one bar redrawn in place on a terminal; in a log (not a terminal), one
    line at each tenth of the work, so a log gets about 10 lines, not hundreds of carriage returns."""

    def __init__(self, total, label, out=None):
        import sys
        import time
        self.total, self.label, self.t0, self.n, self.time = total, label, time.time(), 0, time
        self.out = out or sys.stderr
        self.tty, self.shown = self.out.isatty(), -1

    def update(self, n=1, extra=""):
        self.n += n
        el = self.time.time() - self.t0
        rate = self.n / el if el > 0 else 0.0
        bar = "#" * int(30 * self.n / max(self.total, 1))
        if self.tty:
            self.out.write(f"\r{self.label} [{bar:<30}] {self.n}/{self.total} {rate:.2f}/s {extra}")
            if self.n >= self.total:
                self.out.write("\n")
        elif (tenth := 10 * self.n // max(self.total, 1)) > self.shown:
            self.shown = tenth
            self.out.write(f"{self.label} {self.n}/{self.total} {rate:.2f}/s {extra}\n")
        self.out.flush()


def quiet_worker() -> None:
    """Pool initializer: Ctrl-C reaches the main process alone, which ends the pool (no traceback per worker)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _check_and_repair(out: Path, task, cameras, image_size, grasp_natural, seed, stats) -> tuple:
    """Before a run continues a folder: every episode up to the last one present must read; a missing or corrupt
    one is recorded again in place from its seed (the expert is deterministic). Brings `stats` up to date with
    what is on disk (a kill between an episode and meta.json leaves it behind). Returns (episodes, next seed)."""
    index = []
    for p in episode_paths(out):
        if not re.fullmatch(r"episode_\d{6}\.npz", p.name):
            raise DataError(f"{p}: not an episode name (episode_NNNNNN.npz)")
        index.append(int(p.name[8:14]))
    n = max(index, default=-1) + 1
    known = stats.get("seeds", [])[:n]
    seeds, broken = known + [None] * (n - len(known)), []
    for i in range(n):
        try:
            seeds[i] = load_episode(out / f"episode_{i:06d}.npz")["seed"]
        except DataError:
            broken.append(i)
    for i in broken:
        if seeds[i] is None:  # a folder from before seeds were recorded: the untried seeds between neighbours
            lo = next((seeds[j] for j in range(i - 1, -1, -1) if seeds[j] is not None), seed - 1)
            later = [j for j in range(i + 1, n) if seeds[j] is not None]
            failed = {f["seed"] for f in stats["failures"]}
            if later:  # as many seeds between the neighbours as episodes missing there
                cands = [s for s in range(lo + 1, seeds[later[0]]) if s not in failed]
                ok = len(cands) == later[0] - i
            else:  # the last ones: the seeds after lo that did not fail
                cands, ok = [s for s in range(lo + 1, lo + 1 + n + len(failed)) if s not in failed], True
            if not ok:
                raise DataError(f"{out / f'episode_{i:06d}.npz'}: missing or corrupt, and its seed cannot be told "
                                f"(candidates {cands}); delete the folder to record it anew")
            seeds[i] = cands[0]
        s, ok, _, _, ep = _attempt((task, seeds[i], cameras, tuple(image_size), grasp_natural))
        if not ok:
            raise DataError(f"{out / f'episode_{i:06d}.npz'}: seed {seeds[i]} no longer succeeds; delete the folder")
        save_episode(out / f"episode_{i:06d}.npz", ep)
        print(f"{out / f'episode_{i:06d}.npz'}: missing or corrupt, recorded again from seed {s}", file=sys.stderr)
    next_seed = seeds[-1] + 1 if n else seed
    stats["failures"] = [f for f in stats["failures"] if f["seed"] < next_seed]  # the rest are tried again
    stats.update(saved=n, seeds=seeds, attempts=next_seed - seed)
    return n, next_seed


def generate(task, episodes, out, seed=0, workers=1, cameras=None, image_size=(96, 96), quiet=False,
             grasp_natural: bool = False) -> dict:
    """Record `episodes` successful expert episodes of `task` into `out` (resumes a partial run).
    `grasp_natural`: blocks are pinched along the arm's natural finger direction whatever their yaw.

    Seeds are tried in order seed, seed+1, ...; the k-th successful one becomes episode_k. Failed attempts
    are counted (by furthest stage) and reported, never saved. Returns the generation summary.
    """
    from world import sim
    import world
    try:
        suite = world.suite_of(task)
    except ValueError as e:
        raise DataError(str(e)) from None
    cameras = list(cameras or suite.CAMERAS)
    out = Path(out)
    meta = make_meta([task], cameras, image_size)
    gen = {"task": task, "seed": seed, "cameras": cameras, "image_size": list(image_size)}
    if grasp_natural:
        gen["grasp_natural"] = True
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create output folder ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise DataError(f"{out}: output folder is not writable")
    existing = [p.name for p in out.iterdir()]
    if existing:
        old = None
        try:
            old = json.loads((out / "meta.json").read_text())
        except Exception:
            pass
        if old is None or old.get("generation", {}) | {"episodes": None} != gen | {"episodes": None}:
            raise DataError(f"{out}: output folder is not empty and is not an unfinished run of the same "
                            f"command (task, seed, cameras, image size, grasp options); choose a new folder")
    stats = (json.loads((out / "meta.json").read_text()).get("generation_stats") if existing else None) or \
        {"attempts": 0, "failures": [], "saved": 0}
    k, next_seed = _check_and_repair(out, task, cameras, image_size, grasp_natural, seed, stats)
    if seed + episodes * 2 + 1000 > sim.EVAL_SEED_OFFSET:
        raise DataError(f"--seed {seed}: demonstration seeds must stay below {sim.EVAL_SEED_OFFSET} "
                        f"(evaluation seeds start there)")
    save_meta(out, meta | {"generation": gen | {"episodes": episodes}, "generation_stats": stats})
    bar = Progress(episodes, task) if not quiet else None
    if bar:
        bar.n = k
    pool = None
    if workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("spawn").Pool(workers, initializer=quiet_worker)
    try:
        while k < episodes:
            batch = [(task, s, cameras, tuple(image_size), grasp_natural) for s in range(next_seed, next_seed + max(workers, min(8, episodes - k)))]
            results = pool.imap(_attempt, batch) if pool else map(_attempt, batch)
            for s, ok, stage, steps, ep in results:
                next_seed = s + 1
                if k >= episodes:
                    break
                stats["attempts"] += 1
                if not ok:
                    stats["failures"].append({"seed": s, "stage": stage})
                    continue
                save_episode(out / f"episode_{k:06d}.npz", ep)
                k += 1
                stats["saved"], stats["seeds"] = k, stats.get("seeds", [])[:k - 1] + [s]
                if bar:
                    bar.update(extra=f"failed attempts: {len(stats['failures'])}")
            save_meta(out, meta | {"generation": gen | {"episodes": episodes}, "generation_stats": stats})
    finally:
        if pool:
            pool.terminate()
    return stats


# ----------------------------------------------------------------------------- videos

def annotate(frame: np.ndarray, text: str, grippers) -> np.ndarray:
    """Upscale a frame and add a caption strip: the instruction and one bar per gripper (green open, red closed)."""
    from PIL import Image, ImageDraw
    scale = max(2, -(-320 // frame.shape[1]))  # at least 320 px wide so the caption fits
    img = np.repeat(np.repeat(frame, scale, 0), scale, 1)
    H, W = img.shape[:2]
    canvas = Image.new("RGB", (W, H + 34), (20, 20, 20))
    canvas.paste(Image.fromarray(img), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, H + 2), text[:max(10, W // 6)], fill=(255, 255, 255))
    for i, g in enumerate(grippers):
        x0 = 4 + i * (W // 2)
        g = float(np.clip(g, 0, 1))
        color = (60, 200, 60) if g > 0.5 else (220, 60, 60)
        draw.rectangle([x0, H + 18, x0 + int((W // 2 - 40) * g) + 2, H + 28], fill=color)
        draw.text((x0 + W // 2 - 34, H + 17), f"g{i} {g:.2f}", fill=(200, 200, 200))
    return np.asarray(canvas)


def write_video(path, frames, fps) -> None:
    import imageio.v2 as imageio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp.mp4")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=7) as w:
        for f in frames:
            w.append_data(f)
    os.replace(tmp, path)


def show(folder, episode, out) -> Path:
    meta = load_meta(folder)
    paths = episode_paths(folder)
    if not 0 <= episode < len(paths):
        raise DataError(f"{folder}: no episode {episode} (has {len(paths)})")
    ep = load_episode(paths[episode])
    cams = [c for c in meta["cameras"] if c in ep["images"]]
    if not cams:
        raise DataError(f"{paths[episode]}: has no images to show")
    g_idx = meta["gripper_indices"]
    frames = [annotate(np.concatenate([ep["images"][c][t] for c in cams], 1), ep["instruction"],
                       ep["action"][t, g_idx]) for t in range(len(ep["action"]))]
    write_video(out, frames, meta["fps"])
    return Path(out)


# ----------------------------------------------------------------------------- command-line options (every entry point)

def opt(default, help: str, required: bool = False, choices=None, positional: bool = False):
    """A field of an entry point's options dataclass: its default and the help of its --flag (CleanRL style);
    positional: a required argument by position (SRC DST) instead of a flag."""
    meta = {"help": help, "required": required, "choices": choices, "positional": positional}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def parse_options(cls, argv=None, prog=None, description=None, defaults=None):
    """The options dataclass `cls` from --kebab-case flags, one per field: bools are switches (--x, or --x /
    --no-x where the default is on), lists take one or more values of their default's element type. `defaults`
    (name -> value) replaces fields' defaults (a named preset); fields made with opt(..., positional=True) are
    taken by position, in field order. The dataclass checks itself in __post_init__."""
    import argparse
    p = argparse.ArgumentParser(prog=prog, description=description)
    for f in dataclasses.fields(cls):
        d = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        d = (defaults or {}).get(f.name, d)
        flag, h, req = "--" + f.name.replace("_", "-"), f.metadata.get("help", ""), f.metadata.get("required", False)
        if f.metadata.get("positional"):
            p.add_argument(f.name, type=type(d), help=h)
        elif isinstance(d, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction if d else "store_true", default=d, help=h)
        elif isinstance(d, list):
            p.add_argument(flag, nargs="*", type=type(d[0]) if d else str, default=d, required=req, help=h)
        else:
            p.add_argument(flag, type=type(d), default=d, required=req, choices=f.metadata.get("choices"),
                           help=f"{h} (default: {d})")
    return cls(**vars(p.parse_args(argv)))


# ----------------------------------------------------------------------------- provenance (experts: lab/diagnostics.py; benchmarks: lab/bench.py)

def git_revision() -> str:
    import subprocess
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
        # results/ is where figures are written; its own changes do not make the code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="data.py", description="Task suite, demonstrations and the episode format.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tasks", help="one line per task: name, gripper events, arms used")
    g = sub.add_parser("generate", help="record N successful expert episodes")
    g.add_argument("--task", required=True)
    g.add_argument("--episodes", type=int, required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--seed", type=int, default=0, help="first seed tried; attempts use seed, seed+1, ...")
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--cameras", nargs="+", default=None, help="subset of: top left_wrist right_wrist "
                   "(Franka twin tasks: front wrist); default: all of the task's scene")
    g.add_argument("--image-size", type=int, nargs=2, default=[96, 96], metavar=("H", "W"))
    g.add_argument("--grasp-natural", action="store_true", help="the expert pinches blocks along the arm's natural "
                   "finger direction whatever the block's yaw (experts.Expert.GRASP_YAW off): the wrist no longer "
                   "turns with a yaw that a --grounded-only policy cannot see; default: the pair of faces nearest it")
    s = sub.add_parser("show", help="write an episode as an mp4 with the gripper state drawn")
    s.add_argument("dir")
    s.add_argument("--episode", type=int, default=0)
    s.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        from world import sim
        import world
        if a.cmd == "tasks":
            for suite in world.SUITES:
                for t in suite.TASKS.values():
                    arms = ("both at once" if t.both_arms else "one (left or right: the side of the object)") \
                        if suite is sim else f"one ({suite.ROBOT})"
                    print(f"{t.name:17s} events={t.gripper_events}  arms={arms}  max_steps={t.max_steps}  {t.description}")
        elif a.cmd == "generate":
            if a.episodes < 1:
                raise DataError(f"--episodes must be >= 1, got {a.episodes}")
            st = generate(a.task, a.episodes, a.out, a.seed, a.workers, a.cameras, a.image_size,
                          grasp_natural=a.grasp_natural)
            print(f"{a.out}: {st['saved']} episodes saved, {st['attempts']} attempts, "
                  f"{len(st['failures'])} expert failures " + (f"(seeds {[f['seed'] for f in st['failures']]})" if st["failures"] else ""))
        elif a.cmd == "show":
            print(show(a.dir, a.episode, a.out))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ndata.py: interrupted; what is saved stays, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
