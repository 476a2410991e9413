"""Kinesthetic demonstrations in the episode format: `python robot/record.py --robot franky|mujoco ...`.

  python robot/record.py --robot franky --ip 172.16.0.2 --task pick_red --instruction "put the red block on the pad" \
      --camera realsense:SERIAL1,realsense:SERIAL2 --out data/real_pick --episodes 10
  python robot/record.py --robot mujoco --task franka_pick_place --out data/twin_rec --episodes 5

On the real arm (franky): guiding mode. The operator moves the arm by hand (holding the two guiding buttons by
the flange) while this script reads the joints and the cameras at the control rate; SPACE toggles the gripper
(grasp / open), ENTER or q ends the episode. On the twin (mujoco): the scripted expert stands in for the hand:
it drives the arm and the gripper, and the recorder reads only what it reads on the real arm (the measured
joints, the gripper width, the cameras and the gripper command).

Recorded: qpos[t] = [measured joints, measured width / 0.08] and action[t] = [measured joints at t+1, the
gripper command at t (1 = open, 0 = closed)]: the absolute target a position-controlled policy sends at t to
be where the hand had the arm at t+1. One observation more than steps is read; the last is dropped.

The rate is held by deadlines, as in eval_real.py, with reads that never wait: the gripper's width comes from
hardware.GripperWorker's thread (a real Franka Hand takes about 100 ms per read) and its commands go through
it, the cameras' frames from their capture threads. Each episode's rate is measured from the reads' times; an
episode more than 5% off --fps, or with one step interval longer than 1.5 control periods (a stall the mean rate
hides), or with a gripper command the hand did not carry out, is not saved, saying why. meta.json's
`measured_fps` is the lowest rate of the episodes in the folder (its `fps` the rate claimed).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import select
import sys
import time
from pathlib import Path

if __package__ in (None, ""): sys.path[0] = str(Path(__file__).resolve().parents[1])   # python robot/record.py

import numpy as np  # noqa: E402

import data  # noqa: E402
import eval_real as er  # noqa: E402
from robot import hardware as hw  # noqa: E402


def record_episode(arm, cameras: dict, fps: float, max_steps: int, clock=time.monotonic, sleep=time.sleep,
                   image_size=None) -> dict:
    """Read arm + cameras at `fps` until arm.finished() or max_steps; returns {'images', 'qpos', 'action',
    'overruns', 'rate_hz', 'max_step_s'} (the rate held and the longest interval between two reads, from the
    reads' start times on `clock`).

    arm: read_state() -> (q (7,), width in [0, 1]); gripper_command() -> 1 open / 0 closed; finished() -> bool.
    """
    dt, reads, overruns, starts = 1.0 / fps, [], 0, []
    next_t = clock()
    for t in range(max_steps + 1):
        starts.append(clock())
        q, width = arm.read_state()
        images = {c: hw.resize(cam.read(), image_size) if image_size else np.asarray(cam.read(), np.uint8)
                  for c, cam in cameras.items()}
        reads.append((np.asarray(q, float), float(width), images, float(arm.gripper_command())))
        if t == max_steps or arm.finished():
            break
        next_t += dt  # deadline-based, as eval_real.run_episode
        wait = next_t - clock()
        if wait > 0:
            sleep(wait)
        else:
            overruns += 1
            next_t = clock()
    T = len(reads) - 1
    if T < 1:
        raise hw.RobotError("the episode ended before a single step was recorded")
    return {"images": {c: np.stack([r[2][c] for r in reads[:T]]) for c in cameras},
            "qpos": np.stack([np.r_[r[0], r[1]] for r in reads[:T]]).astype(np.float32),
            "action": np.stack([np.r_[reads[t + 1][0], reads[t][3]] for t in range(T)]).astype(np.float32),
            "overruns": overruns, "rate_hz": er.measured_rate(starts), "max_step_s": float(np.diff(starts).max())}


# ----------------------------------------------------------------------------- the twin: the expert's hand

class TwinHand:
    """The twin driven by its scripted expert (the 'hand'), with a simulated clock: sleep() runs the expert's
    next actions for the time asked for. Seen by the recorder exactly as the real arm is."""

    def __init__(self, task, cameras, image_size):
        from world import twin
        self.twin, self.env = twin, twin.FrankaEnv(task, cameras, image_size)

    def reset(self, seed):
        from world import experts
        obs = self.env.reset(seed)
        self.plan = experts.make_expert(self.env).actions()
        self.next = next(self.plan, None)  # the hand's action for the coming step
        self.grip, self.now, self.debt = 1.0, 0.0, 0.0
        return obs

    def read_state(self):
        q = self.env.qpos()
        return q[:7], float(q[7])

    def gripper_command(self):
        if self.next is not None:
            self.grip = float(self.next[7])
        return self.grip

    def finished(self):
        return self.next is None

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.debt += max(0.0, seconds)
        while self.debt > self.twin.DT - 1e-9:
            self.debt -= self.twin.DT
            self.env.apply(self.next if self.next is not None else np.r_[self.env.qpos()[:7], self.grip])
            self.next = next(self.plan, None) if self.next is not None else None
            self.now += self.twin.DT


# ----------------------------------------------------------------------------- the real arm: guiding mode

class TerminalKeys:
    """Single key presses from the terminal without Enter (cbreak mode), read without blocking."""

    def __enter__(self):
        import termios
        import tty
        if not sys.stdin.isatty():
            raise hw.RobotError("recording on the real arm needs a terminal (the gripper is toggled from the keyboard)")
        self.fd = sys.stdin.fileno()
        self.old = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        return self

    def __call__(self) -> str:
        out = ""
        while select.select([self.fd], [], [], 0)[0]:
            out += os.read(self.fd, 32).decode(errors="ignore")
        return out

    def __exit__(self, *exc):
        import termios
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.old)


class FrankyGuide:
    """The real Franka in guiding mode (franky): joints read, the width the latest GripperWorker read, the gripper
    toggled by `keys()` (SPACE) through the worker, ENTER or q ends the episode. franky's
    Robot.set_guiding_mode unlocks all six Cartesian directions and the elbow; the operator guides by holding
    the two buttons near the flange. Nothing here waits on the hand, so the recorder holds its rate."""

    def __init__(self, ip, realtime="enforce", gripper_speed=0.05, gripper_force=20.0, keys=lambda: "", log=print):
        f = self.f = hw.require("franky", hw.FRANKY_HINT)
        hw.check_reachable(ip)
        rt = f.RealtimeConfig.Ignore if realtime == "ignore" else f.RealtimeConfig.Enforce
        try:
            self.robot = f.Robot(ip, realtime_config=rt)
            hw.clear_errors(self.robot, f, log)          # a reflex from the last session; recovery checked
            self.robot.set_guiding_mode([True] * 6, True)
            gripper = f.Gripper(ip)
        except f.Exception as e:
            raise hw.RobotError(f"cannot connect to the Franka at {ip} for guiding: {type(e).__name__}: {e}") from None
        self.hand = hw.GripperWorker(gripper, gripper_speed, gripper_force, log)
        self.keys, self.log = keys, log
        self.closed = self.done = False

    def start(self):
        self.hand.request(False)  # every demonstration starts with the gripper open
        self.closed = self.done = False

    def read_state(self):
        q = np.asarray(self.robot.current_joint_state.position, float)
        width, _ = self.hand.latest()                    # never waits on the hand
        return q, float(np.clip(width / hw.GRIPPER_MAX_WIDTH, 0.0, 1.0))

    def gripper_command(self):
        for k in self.keys():
            if k == " ":
                self.closed = not self.closed
                self.hand.request(self.closed)           # the worker sends it; recording goes on at once
                self.log("gripper " + ("close" if self.closed else "open"))
            elif k in ("\n", "\r", "q"):
                self.done = True
        return 0.0 if self.closed else 1.0

    def finished(self):
        return self.done

    def gripper_failures(self) -> list:
        """The gripper commands of the episode that failed, once the last one has ended (bounded wait)."""
        if not self.hand.wait_idle(2 * hw.GRIPPER_MAX_WIDTH / self.hand.speed):
            return ["the last gripper command had not ended two strokes after the episode"]
        return self.hand.failures()

    def close(self):
        self.hand.close()
        self.robot = self.hand = None


# ----------------------------------------------------------------------------- saving and the CLI

def prepare_out(out: Path, task: str, cameras, image_size, fps) -> None:
    """meta.json for this set-up; an existing folder must hold the same set-up (its tasks are kept)."""
    from world import twin
    out.mkdir(parents=True, exist_ok=True)
    meta = twin.make_meta([task], cameras, image_size, fps)
    if (out / "meta.json").exists():
        old = data.load_meta(out)
        bad = [k for k in ("fps", "action_names", "qpos_names", "gripper_indices", "cameras", "image_size") if old.get(k) != meta[k]]
        if bad:
            raise hw.RobotError(f"{out}/meta.json differs in {bad}; use another --out for this set-up")
        meta["tasks"] = {**old["tasks"], **meta["tasks"]}
        if "measured_fps" in old:                        # the lowest rate of the episodes already there
            meta["measured_fps"] = old["measured_fps"]
    data.save_meta(out, meta)


RATE_TOLERANCE = 0.05  # an episode held more than 5% off --fps is not saved: its steps are not the claimed ones
MAX_STEP_PERIODS = 1.5  # nor one with a step longer than this many periods (a 1 s stall in 60 s passes the mean)


def timing_held(ep: dict, fps: float, log=print) -> bool:
    """Whether the episode was recorded at the rate claimed (within RATE_TOLERANCE) with no step longer than
    MAX_STEP_PERIODS periods; says in one line why not."""
    if abs(ep["rate_hz"] - fps) > RATE_TOLERANCE * fps:
        log(f"held {ep['rate_hz']:.2f} Hz, not the {fps:g} Hz claimed ({ep['overruns']} late steps: a slow camera or "
            "a loaded CPU?): not saved")
        return False
    if ep["max_step_s"] > MAX_STEP_PERIODS / fps:
        log(f"one step took {ep['max_step_s']:.3f} s, over {MAX_STEP_PERIODS:g} periods of {fps:g} Hz (a stall: camera, "
            "CPU?): not saved")
        return False
    return True


def note_rate(out: Path, rate: float) -> None:
    """meta.json's measured_fps: the lowest rate held by an episode saved in the folder."""
    meta = data.load_meta(out)
    meta["measured_fps"] = round(min(rate, meta.get("measured_fps", math.inf)), 3)
    data.save_meta(out, meta)


def save(out: Path, ep: dict, instruction: str, task: str, seed: int) -> Path:
    path = out / f"episode_{len(data.episode_paths(out)):06d}.npz"
    data.save_episode(path, {**ep, "instruction": instruction, "task": task, "seed": seed})
    note_rate(out, ep["rate_hz"])
    return path


def build_parser():
    p = argparse.ArgumentParser(prog="record.py", description=__doc__.split("\n")[0])
    p.add_argument("--robot", choices=["franky", "mujoco"], required=True)
    p.add_argument("--task", required=True, help="task name stored in the episodes (mujoco: a twin task)")
    p.add_argument("--instruction", default="", help="instruction stored (mujoco: default the layout's)")
    p.add_argument("--out", required=True, help="episode folder (appends to an existing one of the same set-up)")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--fps", type=float, default=20.0, help="control rate (20, as the twin)")
    p.add_argument("--max-steps", type=int, default=1200, help="steps per episode at most (franky: 60 s at 20 Hz)")
    p.add_argument("--image-size", type=int, nargs=2, default=[96, 96], metavar=("H", "W"))
    p.add_argument("--camera-names", default="front,wrist", help="names stored for the cameras, comma separated")
    p.add_argument("--camera", default="realsense", help="franky: one spec per name (as eval_real.py --camera)")
    p.add_argument("--camera-timeout", type=float, default=1.5)
    p.add_argument("--ip", default="", help="franky: robot FCI address")
    p.add_argument("--realtime", choices=["enforce", "ignore"], default="enforce")
    p.add_argument("--gripper-speed", type=float, default=0.05)
    p.add_argument("--gripper-force", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0, help="mujoco: first layout seed (demonstration seeds)")
    p.add_argument("--yes", action="store_true", help="franky: keep every episode without asking")
    return p


def record_twin(a, log=print) -> list:
    """Episodes on the twin, the expert as the hand; kept only when the task's success predicate held."""
    from world import twin
    if a.task not in twin.TASKS:
        raise hw.RobotError(f"--robot mujoco records a twin task: {', '.join(twin.TASKS)}; got '{a.task}'")
    if a.fps != twin.FPS:
        raise hw.RobotError(f"the twin runs at {twin.FPS} Hz; got --fps {a.fps:g}")
    names = [c for c in a.camera_names.split(",") if c]
    hand = TwinHand(a.task, names, a.image_size)
    cams = {c: twin.TwinCamera(hand.env, c) for c in names}
    out = Path(a.out)
    prepare_out(out, a.task, names, a.image_size, a.fps)
    saved, seed = [], a.seed
    while len(saved) < a.episodes:
        if seed >= twin.EVAL_SEED_OFFSET:
            raise hw.RobotError(f"demonstration seeds must stay below {twin.EVAL_SEED_OFFSET}")
        obs = hand.reset(seed)
        ep = record_episode(hand, cams, a.fps, a.max_steps, hand.clock, hand.sleep)
        if hand.env.success:
            path = save(out, ep, a.instruction or obs["instruction"], a.task, seed)
            saved.append(path)
            log(f"seed {seed}: {len(ep['action'])} steps -> {path}")
        else:
            log(f"seed {seed}: the expert failed the task; not saved")
        seed += 1
    return saved


def keep(keys, log=print, sleep=time.sleep, poll=0.05) -> bool:
    """Ask y/n with single key presses (the terminal is in cbreak mode while recording)."""
    log("keep it? [y/n]")
    while True:
        for k in keys().lower():
            if k in "yn":
                return k == "y"
        sleep(poll)


def record_franky(a, log=print, keys=None, guide=None, cameras=None, clock=time.monotonic, sleep=time.sleep) -> list:
    """Episodes guided by hand on the real arm. keys (default: the terminal's), guide (default: FrankyGuide at
    --ip), cameras (default: --camera), clock and sleep can be injected (tests)."""
    if not a.ip:
        raise hw.RobotError("--ip is required (the robot's FCI address)")
    if not a.instruction:
        raise hw.RobotError("--instruction is required on the real arm")
    names = [c for c in a.camera_names.split(",") if c]
    out, saved = Path(a.out), []
    with (contextlib.nullcontext(keys) if keys is not None else TerminalKeys()) as keys:
        guide = guide or FrankyGuide(a.ip, a.realtime, a.gripper_speed, a.gripper_force, keys, log)
        cams = {}
        try:
            if cameras is not None:
                cams = cameras
            elif a.camera != "none":
                cams = hw.open_cameras(a.camera, names, a.camera_timeout)
            prepare_out(out, a.task, list(cams), a.image_size, a.fps)
            for i in range(a.episodes):
                log(f"episode {i + 1}/{a.episodes}: press SPACE to start; then guide the arm (hold the buttons by "
                    "the flange), SPACE toggles the gripper, ENTER or q ends")
                while " " not in keys():
                    sleep(0.05)
                guide.start()
                ep = record_episode(guide, cams, a.fps, a.max_steps, clock, sleep, image_size=tuple(a.image_size))
                log(f"recorded {len(ep['action'])} steps at {ep['rate_hz']:.2f} Hz ({ep['overruns']} late)")
                failed = guide.gripper_failures()
                if failed:
                    log(f"{failed[0]} ({len(failed)} failed): the episode's gripper commands are not what the hand "
                        "did: not saved")
                if failed or not timing_held(ep, a.fps, log) or (not a.yes and not keep(keys, log, sleep)):
                    continue
                path = save(out, ep, a.instruction, a.task, i)
                saved.append(path)
                log(f"saved {path}")
        finally:
            for c in cams.values():
                c.close()
            guide.close()
    return saved


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.episodes < 1 or a.max_steps < 1 or a.fps <= 0:
            raise hw.RobotError("--episodes >= 1, --max-steps >= 1 and --fps > 0")
        saved = record_twin(a) if a.robot == "mujoco" else record_franky(a)
        print(f"{len(saved)} episode(s) in {a.out}")
    except hw.RobotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
