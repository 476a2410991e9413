"""Run a trained policy on a real Franka (FR3 or Panda) through franky, safely, and record every rollout.

  python eval_real.py --ckpt CKPT --ip 172.16.0.2 --instruction "put the red block on the pad" --dry-run
  python eval_real.py --ckpt CKPT --ip 172.16.0.2 --instruction "..."              # live, dynamics 0.2
  franky-sim -s mujoco &                                                          # no robot: the protocol twin
  python eval_real.py --ckpt CKPT --ip 127.0.0.1 --realtime ignore --camera none --instruction "..."
  python eval_real.py --ckpt CKPT --robot mujoco --task franka_pick_place --episodes 50   # the MuJoCo twin
  python eval_real.py --remote ws://GPU-BOX:8000 ...   # the policy served there (python -m interop.server CKPT)

Demonstrations are recorded with robot/record.py (`python robot/record.py --robot franky|mujoco ...`). The hardware this loop
drives (the franky backend, the gripper worker, cameras) is in robot/hardware.py. Installation, the safety checklist
and the numbers measured for it: robot/README.md.

--robot mujoco (twin.py) runs the same loop, limits and caps on the simulated Franka with rendered cameras and
a simulated clock (as fast as the CPU allows), over randomised evaluation seeds, scored by the task's success
predicate; it writes OUT/results.json in eval_sim.py's schema (default OUT: results/twin/TASK), so that
`python lab/diagnostics.py compare` pairs twin runs by seed.

Each rollout: connect (the address is probed first, so a wrong one fails in seconds), clear what the last one
left (a hard stop's pending error; a reflex, recovered with its result checked), open the gripper and move to
the ready pose (a motion that fails says why at once), then at a fixed rate (default: the checkpoint's fps,
held by the clock, not by sleeping a fixed dt) read joints + gripper + cameras, and every `n_action_steps`
steps ask the policy for a chunk and send the executed part as ONE franky waypoint motion (a new
point-to-point motion per step would stop the arm at every target). The rate actually held is measured and
reported; the loop says so when it falls behind. The rollout is saved in the project's episode format with a
video, the operator's label is asked, and a row is appended to OUT/trials.csv with the success rate so far and
its Wilson 95% interval.

The loop never waits on the gripper: on a real Franka Hand reading `gripper.width` takes about 100 ms, and
franky's "asynchronous" gripper calls wait for the previous command to finish (a full stroke at 0.05 m/s takes
1.6 s). A GripperWorker reads the width on its own thread (the loop takes the latest value; a stale one is
reported) and runs the newest requested command on another.

Safety layers, all on by default, each with a flag:
  * joint targets clamped to the documented limits of --arm minus --joint-margin (0.05 rad);
  * every target within --max-joint-speed / fps (0.5 rad/s -> 0.025 rad at 20 Hz) of the previous one, the
    first one of a chunk of the *measured* joints, so target k is at most (k+1) caps from where the arm is;
  * no waypoint leads the arm past a limit: its velocity is 0 where a joint reverses or holds (so at a clamped
    target), and toward a limit at most what brakes to rest before the clamped bound at half the planner's
    deceleration (waypoint_velocities);
  * franky's relative_dynamics_factor --dynamics 0.2 (velocity, acceleration, jerk at 20% of the limits), with
    franky's limits lowered to the --arm's at connect: franky 2.0.0 plans with the Panda's accelerations and
    jerks, up to twice an FR3's (plan_with_arm_limits);
  * the workspace guard: every target's end effector (flange, TCP, fingertips; forward kinematics) stays in
    --workspace above --table-z + --table-margin (m, robot base frame); a chunk leaving it is cut where its path
    reaches the box (cut, not clipped: clipping would need IK and bend the policy's path), the arm stops there
    and the rollout ends 'workspace'; a measured pose 10 mm outside stops it at once; contact reflex thresholds
    (--collision-torque, --collision-force) set at connect and logged;
  * every step, before the gripper gate, the running motion, the robot mode and the hand are polled: a failed
    motion (a reflex, or franky's planner failure: a plain RuntimeError), a mode other than Idle / Move (the user
    stop, even pressed and released while the arm stood still) or a failed gripper command ends the rollout as
    'error' with the arm stopped; the next one starts once the operator confirms. franky's
    control_command_success_rate is kept per step and its min / mean per rollout go to trials.csv;
  * camera frames older than --max-frame-age (0.1 s) stop the rollout; step times and frame ages are saved;
  * NaN / inf anywhere in a chunk (gripper included) stop the rollout; the gripper is binarised with hysteresis + a cooldown of at least one
    full stroke, and commanded only on change; Ctrl-C is deferred to the end of the current step (a second one
    aborts at once);
  * whatever ends the rollout (last step, Ctrl-C, an exception), `finally` stops the motion (JointStopMotion,
    then franky's hard stop if that fails, its pending error cleared) and leaves the arm still;
  * --dry-run connects and reads the real state, runs the loop and prints the targets the policy asked for and
    the capped ones sent, with their largest difference per chunk; moves nothing.

Assumptions and choices (documented deviations):
  * Action / qpos layout is the Franka one: 7 joint angles (rad) + gripper (1 = open, 0 = closed; qpos holds
    the measured width / 0.08). Checkpoints with another layout are refused.
  * The recorded `action` is what was commanded (clamped, capped; gripper binarised to 1/0), not the raw output.
  * Intermediate waypoints carry a velocity (central difference of the targets, clipped to 80% of the scaled
    limit: franky's planner rejects faster ones) so the arm flows through them; the last one is at rest, so a
    late next chunk leaves the arm still, never coasting. At dynamics 0.2 the arm lags the policy's intended
    timing; raise --dynamics once the dry and slow runs look right.
  * Homing uses one planned motion to the ready pose (speed limited by --dynamics, not by the per-step cap).
  * --camera none: the policy sees black images and the episode has no image keys (and no video).
  * Camera images are resized (bilinear, no crop) to the checkpoint's image size; match the training view.
  * The gripper closes with a grasp (any width, --gripper-force N) and opens fully; at the end it is left as
    is (stopping a grasp would release the object).
  * trials.csv counts rows with the same --ckpt and --task labelled success / fail; rollouts that ended in an
    error ('error', 'aborted') or got no answer ('unlabelled') are saved and listed but not counted. Dry runs
    are saved in OUT/dry-run/ with the label 'dry-run' and never asked for one.
    meta.json's tasks[task].gripper_events is 2 (one grasp, one release): informative only.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import data
from data import opt
from robot.franka import ARMS, READY, Workspace
from robot.hardware import DryRunBackend, FrankyBackend, MotionError, RobotError, open_cameras, resize
from stats import wilson  # noqa: F401  (Wilson score 95% interval, shared with eval_sim.py)


# ----------------------------------------------------------------------------- options (one dataclass -> flags)

@dataclass
class Options:
    ckpt: str = opt("", "checkpoint to run (model.py Policy.load)")
    remote: str = opt("", "ws://HOST:PORT: the policy served there (python -m interop.server CKPT), in place of --ckpt; "
                          "its noise is seeded by --seed")
    instruction: str = opt("", "language instruction given to the policy (--robot mujoco: default the layout's)")
    task: str = opt("real", "task name stored in the episode and trials.csv (--robot mujoco: a twin task)")
    robot: str = opt("franky", "robot backend", choices=["franky", "mujoco"])
    ip: str = opt("", "robot FCI address (franky-sim prints its own, usually 127.0.0.1)")
    arm: str = opt("fr3", "joint limits to enforce", choices=sorted(ARMS))
    realtime: str = opt("enforce", "'ignore' for kernels without PREEMPT_RT and for franky-sim",
                        choices=["enforce", "ignore"])
    camera: str = opt("realsense", "one per checkpoint camera, comma separated: realsense[:SERIAL], "
                                   "opencv:N, or none (black images, nothing recorded)")
    camera_timeout: float = opt(1.5, "seconds to wait for a camera's first frame")
    max_frame_age: float = opt(0.1, "s; a camera frame older than this stops the rollout (about three periods of a 30 "
                                    "fps camera; a stalled camera would steer the policy on a frozen image)")
    fps: float = opt(0.0, "control rate in Hz (0 = the checkpoint's)")
    n_action_steps: int = opt(0, "steps of each chunk executed before re-querying (0 = the checkpoint's)")
    noise_scale: float = opt(1.0, "the flow's starting noise times this, in [0, 1] (0: one deterministic chunk per "
                                  "query; model.py Policy.noise_scale)")
    query: str = opt("chunk", "'chunk': predict_chunk, sent as one waypoint motion; 'step': select_action "
                              "every step (one-target motions, jerky)", choices=["chunk", "step"])
    max_steps: int = opt(600, "steps per rollout (Ctrl-C ends one earlier)")
    episodes: int = opt(1, "rollouts in this session")
    dynamics: float = opt(0.2, "franky relative_dynamics_factor in (0, 1]; raise only after slow runs")
    joint_margin: float = opt(0.05, "rad kept from each joint limit")
    workspace: list = opt([0.15, 0.85, -0.40, 0.40, 0.85], "m, robot base frame (x ahead, z up): x_min x_max y_min "
                          "y_max z_max of the box the end effector (flange, TCP, fingertips; forward kinematics) "
                          "stays in; default: the twin's scene")
    table_z: float = opt(0.0, "m, robot base frame: height of the table top (0: the base stands on it)")
    table_margin: float = opt(0.0, "m the fingertips and TCP keep above the table top (the flange 0.08 m more)")
    guard: str = opt("auto", "the workspace guard: 'on', 'off', or 'auto' (on for a real arm, off on the twin: the "
                     "recipes' policies put the open fingertips 2-9 mm under the table in grasps, and the guard ends "
                     "such a rollout; robot/README.md)", choices=["auto", "on", "off"])
    collision_torque: list = opt([20.0, 20.0, 18.0, 18.0, 16.0, 14.0, 12.0], "Nm, per joint: the robot's contact "
                                 "reflex thresholds (franky set_collision_behavior, set at connect)")
    collision_force: list = opt([20.0, 20.0, 20.0, 25.0, 25.0, 25.0], "N and Nm, x y z and about x y z: the "
                                "Cartesian contact reflex thresholds")
    max_joint_speed: float = opt(0.5, "rad/s; per-step target change cap = this / fps")
    gripper_close_above: float = opt(0.6, "close when 1 - gripper action rises above this")
    gripper_open_below: float = opt(0.4, "open when 1 - gripper action falls below this")
    gripper_cooldown: float = opt(1.0, "seconds between two gripper commands (at least one full stroke, "
                                       "0.08 m / --gripper-speed: 1.6 s at 0.05 m/s)")
    gripper_speed: float = opt(0.05, "m/s")
    gripper_force: float = opt(20.0, "N, grasp force")
    home: bool = opt(True, "open the gripper and move to the ready pose before each rollout")
    dry_run: bool = opt(False, "connect, read, run the loop and print the targets; move nothing")
    yes: bool = opt(False, "do not ask for confirmation before moving")
    label: str = opt("", "success|fail for every rollout instead of asking", choices=["", "success", "fail"])
    out: str = opt("results/real", "episode folder (meta.json, episode_*.npz/.mp4, trials.csv)")
    device: str = opt("cpu", "torch device for the policy")
    seed: int = opt(0, "torch seed (policy noise) and the episode's seed field (--robot mujoco: the evaluation "
                       "seed block, as eval_sim.py)")
    video: int = opt(0, "--robot mujoco: save this many rollouts (episode + mp4) in OUT/rollouts")


def parse_options(argv=None) -> Options:
    return data.parse_options(Options, argv, "eval_real.py", __doc__.split("\n")[0])


def check_options(o: Options) -> None:
    if not 0 < o.dynamics <= 1:
        raise RobotError(f"--dynamics must be in (0, 1] (franky's relative_dynamics_factor); got {o.dynamics}")
    if not (0 <= o.gripper_open_below < o.gripper_close_above <= 1):
        raise RobotError("need 0 <= --gripper-open-below < --gripper-close-above <= 1")
    if o.joint_margin < 0 or o.max_joint_speed <= 0 or o.max_steps < 1 or o.episodes < 1 or o.fps < 0:
        raise RobotError("--joint-margin >= 0, --max-joint-speed > 0, --max-steps >= 1, --episodes >= 1, --fps >= 0")
    if not 0 <= o.noise_scale <= 1:
        raise RobotError(f"--noise-scale must be in [0, 1]; got {o.noise_scale}")
    w = o.workspace
    if len(w) != 5 or not (w[0] < w[1] and w[2] < w[3] and o.table_z + o.table_margin < w[4]):
        raise RobotError(f"--workspace is x_min x_max y_min y_max z_max (m), each max above its min and z_max above "
                         f"--table-z + --table-margin; got {w}")
    if len(o.collision_torque) != 7 or len(o.collision_force) != 6 or min(o.collision_torque + o.collision_force) <= 0:
        raise RobotError("--collision-torque takes 7 positive values (Nm), --collision-force 6 (N, Nm)")


def workspace(o: Options):
    """The guard's box, or None where --guard (auto: the twin) leaves it off."""
    if o.guard == "off" or (o.guard == "auto" and o.robot == "mujoco"):
        return None
    return _box(o)


def _box(o: Options) -> Workspace:
    """The end effector's box from the options (m, robot base frame)."""
    w = [float(v) for v in o.workspace]
    return Workspace((w[0], w[1]), (w[2], w[3]), w[4], float(o.table_z), float(o.table_margin))


# ----------------------------------------------------------------------------- robot backends (hardware.py)

def make_backend(o: Options, log=print):
    if o.robot == "mujoco":
        raise RobotError("--robot mujoco runs through evaluate_twin (python eval_real.py --robot mujoco ...)")
    if not o.ip:
        raise RobotError("--ip is required (the robot's FCI address)")
    return FrankyBackend(o.ip, o.arm, o.dynamics, o.realtime, o.gripper_speed, o.gripper_force,
                         recover=not o.dry_run, joint_margin=o.joint_margin, log=log,
                         collision=(list(o.collision_torque), list(o.collision_force)))


# ----------------------------------------------------------------------------- the control loop

def safe_targets(raw, q_measured, lo, hi, max_step) -> np.ndarray:
    """Cap each target to max_step from the previous one (the first from the measured joints), then clamp into
    [lo, hi] so the limits always win. Target k ends up within (k+1) * max_step of where the arm is."""
    raw = np.asarray(raw, float)
    if not np.isfinite(raw).all():
        raise RobotError(f"the policy returned non-finite joint targets: {raw}")
    out, prev = np.empty_like(raw), np.asarray(q_measured, float)
    for k, a in enumerate(raw):
        prev = out[k] = np.clip(np.clip(a, prev - max_step, prev + max_step), lo, hi)
    return out


def check_finite(chunk, step) -> None:
    """Refuse a chunk with any NaN or inf, in any row (executed or not) and any column, the gripper included
    (a NaN gripper action would be ignored by the gate, -inf would close the hand)."""
    bad = np.argwhere(~np.isfinite(np.asarray(chunk, float)))
    if len(bad):
        r, c = bad[0]
        raise RobotError(f"the policy returned non-finite actions at step {step} ({len(bad)} values, the first "
                         f"{chunk[r, c]} in row {r} column {'gripper' if c == 7 else f'joint {c + 1}'}): chunk "
                         "refused, arm stopped")


class GripperGate:
    """Binarise the gripper action (1 = open) with hysteresis and a cooldown, so a value near 0.5 or a short
    spike cannot make the gripper chatter; update() returns the new state only when it changes."""

    def __init__(self, closed, close_above=0.6, open_below=0.4, cooldown=1.0):
        self.closed, self.close_above, self.open_below, self.cooldown = bool(closed), close_above, open_below, cooldown
        self.last = -math.inf

    def update(self, action, now):
        if not math.isfinite(float(action)):
            raise RobotError(f"non-finite gripper action {action}")
        closedness = 1.0 - float(action)
        want = True if closedness > self.close_above else False if closedness < self.open_below else self.closed
        if want == self.closed or now - self.last < self.cooldown:
            return None
        self.closed, self.last = want, now
        return want


@contextlib.contextmanager
def deferred_interrupt(log=print):
    """First Ctrl-C only sets a flag the loop checks between steps (never inside inference or a half-sent
    chunk); a second one raises KeyboardInterrupt at once. Either way the loop's `finally` stops the arm."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag                                       # signal handlers live in the main thread only
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        log("\nCtrl-C: stopping after this step (again to abort at once)")
    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


def check_layout(policy) -> None:
    if len(policy.action_names) != 8 or list(policy.gripper_indices) != [7]:
        raise RobotError(f"this checkpoint's actions are not the Franka layout (7 joints + gripper at index 7): "
                         f"{policy.action_names}, gripper_indices {policy.gripper_indices}")


def run_episode(policy, backend, cameras, o: Options, rec: dict, clock=time.monotonic, sleep=time.sleep, log=print,
                done=None, record_images=True):
    """One rollout, appended step by step to rec['images'|'qpos'|'action'] (so a failure keeps what was
    recorded); returns why it ended. The arm is stopped on every way out. `done()` (the twin's success
    predicate) ends the rollout early with 'done'. rec['rate_hz'] is the control rate actually held (from the
    steps' start times) and rec['overruns'] the steps that started late."""
    fps = o.fps or float(policy.fps)
    dt = 1.0 / fps
    n_exec = 1 if o.query == "step" else max(1, min(o.n_action_steps or policy.n_action_steps, policy.horizon))
    arm = ARMS[o.arm]
    lo, hi = np.add(arm.q_min, o.joint_margin), np.subtract(arm.q_max, o.joint_margin)
    ws = workspace(o)
    hw = tuple(policy.image_size)
    black = {c: np.zeros(hw + (3,), np.uint8) for c in policy.cameras}
    # a new gripper command only once the last one can have finished a full stroke (1.6 s at 0.05 m/s)
    cooldown = max(o.gripper_cooldown, getattr(backend, "gripper_stroke_s", 0.0))
    check = getattr(backend, "check", lambda: math.nan)  # franky: the motion, the robot mode, the hand; every step
    policy.reset()
    rec.setdefault("overruns", 0)
    starts = []                                          # s, when each step began (its state was read)
    with deferred_interrupt(log) as interrupted:
        try:
            if hasattr(backend, "begin") and not o.dry_run:
                backend.begin()                          # what the last rollout left (a hard stop's error, a reflex)
            homed = o.home and not o.dry_run
            if homed:
                go_home(backend, clock, sleep, interrupted)
            elif o.home:
                log("[dry-run] would open the gripper and move to the ready pose")
            closed = False if homed else backend.read_state()[1] < 0.5
            gate = GripperGate(closed, o.gripper_close_above, o.gripper_open_below, cooldown)
            chunk = targets = prev_qpos = None
            cut = False                                  # the chunk sent was cut at the workspace guard
            start, next_t = 0, clock()
            for step in range(o.max_steps):
                if interrupted.is_set():
                    return "ctrl-c"
                if done is not None and done():
                    return "done"
                starts.append(clock())
                q, width = backend.read_state()
                success = check()                        # a failure ends the rollout here, before the gripper gate
                bad = ws.violation(q, WORKSPACE_TOL) if ws is not None else None
                if bad is not None:
                    log(f"workspace guard: the measured {bad[0]} is at {_fmt(bad[1])} m, {bad[2] * 1000:.0f} mm "
                        "outside the box (--workspace, --table-z, --table-margin); stopping")
                    return "workspace"
                query = chunk is None or step - start >= len(chunk)
                if query and cut:                        # the safe part of a cut chunk has run: let the arm
                    settle(backend, clock, sleep)        # reach its last target, then stop there
                    return "workspace"
                # the cameras where they are read: every step of a recorded rollout, else only at a query (the
                # twin renders them; record_images=False is for its evaluation rollouts that save no video)
                images = {c: resize(cam.read(), hw) for c, cam in cameras.items()} if query or record_images else {}
                rec.setdefault("step_t", []).append(starts[-1] - starts[0])   # s since the first step
                rec.setdefault("command_success", []).append(success)         # franky's rate; nan: no motion ran
                for c in images:                         # s, each frame's age when read (nan: not a timed camera)
                    rec.setdefault("frame_age", {}).setdefault(c, []).append(getattr(cameras[c], "last_age", math.nan))
                qpos = np.append(q, width).astype(np.float32)
                if query:  # prev_qpos: one control step earlier (--velocity)
                    obs = {"images": {**black, **images}, "qpos": qpos,
                           "prev_qpos": qpos if prev_qpos is None else prev_qpos, "instruction": rec["instruction"]}
                    if o.query == "step":
                        full = np.asarray(policy.select_action(obs), float)[None]
                    else:
                        full = np.asarray(policy.predict_chunk([obs])[0], float)
                    if interrupted.is_set():             # Ctrl-C during inference: send nothing more
                        return "ctrl-c"
                    if full.ndim != 2 or full.shape[1] != 8 or len(full) == 0:
                        raise RobotError(f"policy returned a chunk of shape {full.shape}; expected (n, 8)")
                    check_finite(full, step)             # the whole chunk, gripper included: refused, arm stopped
                    chunk = full[:n_exec]
                    targets = safe_targets(chunk[:, :7], q, lo, hi, o.max_joint_speed * dt)
                    if o.dry_run:                        # what the policy asked for, and what the caps made of it
                        diff = np.abs(chunk[:, :7] - targets)
                        r, j = np.unravel_index(int(diff.argmax()), diff.shape)
                        log(f"[dry-run] step {step}: raw first {_fmt(chunk[0, :7])} last {_fmt(chunk[-1, :7])}; "
                            f"capped first {_fmt(targets[0])} last {_fmt(targets[-1])}; largest difference "
                            f"{diff[r, j]:.3f} rad (joint {j + 1}, target {r + 1}/{len(targets)})")
                    safe, k = ws.cut(q, targets) if ws is not None else (targets, len(targets))  # the guard
                    if k < len(targets):
                        name, p, excess = ws.violation(targets[k])
                        log(f"workspace guard: target {k + 1}/{len(targets)} of the chunk at step {step} puts the "
                            f"{name} at {_fmt(p)} m, {excess * 1000:.0f} mm outside the box; sending the path up "
                            f"to the box ({len(safe)} targets), then stopping")
                        if len(safe) == 0:
                            return "workspace"
                        targets, chunk, cut = safe, chunk[:len(safe)], True
                    backend.send_chunk(targets, dt)
                    start = step
                i = step - start
                change = gate.update(chunk[i, 7], clock())
                if change is not None:
                    backend.set_gripper(change)          # never waits on the hand (GripperWorker)
                for c, img in (images if record_images else {}).items():
                    rec["images"].setdefault(c, []).append(img)
                rec["qpos"].append(qpos)
                prev_qpos = qpos
                rec["action"].append(np.append(targets[i], 0.0 if gate.closed else 1.0).astype(np.float32))
                next_t += dt                             # deadline-based: inference time does not add up
                wait = next_t - clock()
                if wait > 0:
                    sleep(wait)
                else:
                    rec["overruns"] += 1
                    if rec["overruns"] == 1:
                        log(f"step {step}: {-wait * 1000:.0f} ms behind the {fps:g} Hz schedule (slow inference, "
                            "camera or CPU); re-anchored, the rate held is reported at the end")
                    next_t = clock()                     # late: re-anchor instead of bursting to catch up
            return "max-steps"
        finally:
            rec["rate_hz"] = measured_rate(starts)
            backend.stop()


WORKSPACE_TOL = 0.01  # m the measured end effector may pass the box before the rollout stops (tracking error)


def _num(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else ""


def _fmt(a) -> str:
    return np.array2string(np.asarray(a, float), precision=3, suppress_small=True)


def settle(backend, clock=time.monotonic, sleep=time.sleep, timeout=5.0) -> None:
    """Wait (bounded) until the running motion has ended, where the backend can tell (motion_finished)."""
    finished = getattr(backend, "motion_finished", None)
    deadline = clock() + timeout
    while finished is not None and not finished() and clock() < deadline:
        sleep(0.02)


def measured_rate(starts) -> float:
    """Steps per second from the steps' start times (0.0 with fewer than two steps)."""
    if len(starts) < 2 or starts[-1] <= starts[0]:
        return 0.0
    return (len(starts) - 1) / (starts[-1] - starts[0])


def go_home(backend, clock=time.monotonic, sleep=time.sleep, interrupted=None, timeout=30.0, tol=0.03, settle=1.0):
    """Open the gripper and move to the ready pose as one planned motion; wait (bounded) until there. A motion
    that fails raises its reason at once (backend.motion_finished); one that ends elsewhere, after `settle` s."""
    backend.set_gripper(False)
    backend.send_chunk(READY[None], 1.0)
    finished = getattr(backend, "motion_finished", None)
    deadline, ended = clock() + timeout, None
    while clock() < deadline:
        if interrupted is not None and interrupted.is_set():
            return                                       # the loop sees the flag and ends the rollout
        off = np.abs(backend.read_state()[0] - READY)
        if off.max() < tol:
            return
        if finished is not None and finished():          # raises RobotError when the motion failed
            ended = clock() if ended is None else ended
            if clock() - ended > settle:
                j = int(off.argmax())
                raise RobotError(f"the motion to the ready pose ended with joint {j + 1} {off[j]:.3f} rad away from "
                                 "it (blocked by something? check Desk)")
        sleep(0.1)
    raise RobotError(f"the arm did not reach the ready pose within {timeout:g} s (blocked? reflex? check Desk)")


# ----------------------------------------------------------------------------- recording and trials


def save_rollout(out: Path, policy, o: Options, rec: dict, fps: float, log=print) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    cams = sorted(rec["images"])
    meta = {"fps": fps, "action_names": list(policy.action_names), "qpos_names": list(policy.qpos_names),
            "gripper_indices": [7], "gripper_convention": "1 = open, 0 = closed", "arms": ["arm"],
            "cameras": cams, "image_size": list(policy.image_size), "tasks": {}}
    if (out / "meta.json").exists():                     # one folder = one set-up: refuse to mix
        old = data.load_meta(out)
        bad = [k for k in meta if k != "tasks" and k in old and old[k] != meta[k]]
        if bad:
            raise RobotError(f"{out}/meta.json differs in {bad}; use another --out for this set-up")
        meta["tasks"] = old["tasks"]
    meta["tasks"][o.task] = {"gripper_events": 2, "arms": ["arm"], "max_steps": o.max_steps}
    data.save_meta(out, meta)
    path = out / f"episode_{len(data.episode_paths(out)):06d}.npz"
    images = {c: np.stack(v) for c, v in rec["images"].items()}
    data.save_episode(path, {"images": images, "qpos": np.stack(rec["qpos"]), "action": np.stack(rec["action"]),
                             "instruction": rec["instruction"], "task": o.task, "seed": o.seed})
    finite = lambda v: [x if math.isfinite(x) else None for x in v]   # JSON has no NaN: null
    timing = {"step_t": rec.get("step_t", []), "frame_age": {c: finite(v) for c, v in rec.get("frame_age", {}).items()},
              "command_success": finite(rec.get("command_success", []))}   # s, s, franky's rate; per step
    data.atomic_write_bytes(path.with_suffix(".timing.json"), lambda f: f.write(json.dumps(timing).encode()))
    if images:
        try:
            import imageio.v2 as imageio
            imageio.mimwrite(path.with_suffix(".mp4"), list(np.concatenate([images[c] for c in cams], axis=2)), fps=fps)
        except Exception as e:                           # the episode is saved; a missing codec is not fatal
            log(f"video not written ({type(e).__name__}: {e}); pip install imageio imageio-ffmpeg")
    return path


TRIAL_COLUMNS = ["time", "ckpt", "task", "instruction", "label", "steps", "successes_so_far", "trials_so_far",
                 "rate", "wilson_low", "wilson_high", "episode", "command_success_min", "command_success_mean"]


def command_success(rec: dict) -> tuple:
    """(min, mean) of franky's control_command_success_rate over the steps a motion ran; nan where none did."""
    v = np.asarray(rec.get("command_success", []), float)
    v = v[np.isfinite(v)]
    return (float(v.min()), float(v.mean())) if len(v) else (math.nan, math.nan)


def append_trial(csv_path: Path, row: dict) -> dict:
    """Append a row; the counts cover rows with the same ckpt and task labelled success or fail. A file with
    older columns is rewritten first (atomically) with the new ones empty in its rows."""
    rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
    if rows and list(rows[0]) != TRIAL_COLUMNS:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, TRIAL_COLUMNS, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        data.atomic_write_bytes(csv_path, lambda f: f.write(buf.getvalue().encode()))
    same = [r for r in rows + [row] if r["ckpt"] == row["ckpt"] and r["task"] == row["task"]
            and r["label"] in ("success", "fail")]
    k, n = sum(r["label"] == "success" for r in same), len(same)
    lo, hi = wilson(k, n)
    row = {**row, "successes_so_far": k, "trials_so_far": n, "rate": f"{k / n:.3f}" if n else "",
           "wilson_low": f"{lo:.3f}", "wilson_high": f"{hi:.3f}"}
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, TRIAL_COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)
    return row


def ask_label(ask) -> str:
    while True:
        try:
            ans = ask("Success? [y/n] ").strip().lower()
        except EOFError:
            return "unlabelled"                          # recorded, not counted
        if ans in ("y", "yes", "n", "no"):
            return "success" if ans[0] == "y" else "fail"


# ----------------------------------------------------------------------------- a session on the arm

def load_policy(o: Options):
    if o.remote:                                         # a GPU box serves, this loop stays here (docs/serving.md)
        from interop.client import RemotePolicy
        if o.ckpt:
            raise RobotError("--ckpt and --remote each name the policy: give one")
        try:
            policy = RemotePolicy(o.remote, seed=o.seed)
        except ConnectionError as e:
            raise RobotError(str(e)) from None
        policy.noise_scale = o.noise_scale
        return policy
    if not o.ckpt or not Path(o.ckpt).is_file():
        raise RobotError(f"--ckpt: no checkpoint at '{o.ckpt}'")
    import torch
    torch.manual_seed(o.seed)
    # half the cores, as train.cpu_threads: OpenMP threads spin, so torch on every core stalls beside another
    # busy process (200 twin episodes beside a 1-thread training on 2 cores: 555-563 s with 2 threads, 189 with 1)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    from model import Policy                             # here, so tests and --help need no torch
    policy = Policy.load(o.ckpt, device=o.device)
    policy.noise_scale = o.noise_scale
    return policy


def run(o: Options, policy=None, backend=None, cameras=None, clock=time.monotonic, sleep=time.sleep,
        ask=input, log=print) -> list:
    """Connect, then for each rollout: run, save, label, log the trial. Injected parts are used as given."""
    check_options(o)
    instruction = o.instruction
    if not instruction:
        raise RobotError("--instruction is required")
    backend = backend or make_backend(o, log)            # first: a wrong address fails before the slow load
    if o.dry_run and not isinstance(backend, DryRunBackend):
        backend = DryRunBackend(backend, log)
    results = []
    try:
        policy = policy or load_policy(o)
        check_layout(policy)
        fps = o.fps or float(policy.fps)
        cameras = open_cameras(o.camera, list(policy.cameras), o.camera_timeout, o.max_frame_age) if cameras is None else cameras
        out = Path(o.out) / "dry-run" if o.dry_run else Path(o.out)   # dry runs never mix with real trials
        out.mkdir(parents=True, exist_ok=True)
        for ep in range(o.episodes):
            if not o.dry_run and not o.yes:
                ask(f"Rollout {ep + 1}/{o.episodes}: the arm will move (dynamics {o.dynamics}). "
                    "Hand on the user stop, then press Enter ")
            rec = {"images": {}, "qpos": [], "action": [], "instruction": instruction}
            error = None
            try:
                ended = run_episode(policy, backend, cameras, o, rec, clock, sleep, log)
            except BaseException as e:                   # saved and logged below, then re-raised
                error, ended = e, "error"
            rate, (cs_min, cs_mean) = rec.get("rate_hz", 0.0), command_success(rec)
            log(f"rollout ended ({ended}) after {len(rec['action'])} steps at {rate:.2f} Hz (target {fps:g}), "
                f"{rec.get('overruns', 0)} late" + (f"; control command success rate min {cs_min:.3f}, mean "
                                                    f"{cs_mean:.3f}" if math.isfinite(cs_min) else ""))
            if cs_min < 0.95:
                log("WARNING: the robot missed commands (network jitter: a direct cable, a PREEMPT_RT kernel)")
            if rate and rate < 0.95 * fps:
                log(f"WARNING: the loop held {rate:.2f} Hz, {100 * (1 - rate / fps):.0f}% below {fps:g} Hz: each step "
                    "was longer than the policy was trained on (slow inference or camera? --n-action-steps)")
            path = save_rollout(out, policy, o, rec, fps, log) if rec["action"] else None
            if error is not None:
                label = "aborted" if isinstance(error, KeyboardInterrupt) else "error"
            elif not rec["action"]:
                label = "aborted"                        # e.g. Ctrl-C while homing: nothing to judge
            else:
                label = "dry-run" if o.dry_run else o.label or ask_label(ask)
            row = append_trial(out / "trials.csv", {
                "time": time.strftime("%Y-%m-%d %H:%M:%S"), "ckpt": o.ckpt or o.remote, "task": o.task, "instruction": instruction,
                "label": label, "steps": len(rec["action"]), "episode": path.name if path else "",
                "command_success_min": _num(cs_min), "command_success_mean": _num(cs_mean)})
            log(f"{label}: {row['successes_so_far']}/{row['trials_so_far']} so far, 95% Wilson interval "
                f"[{row['wilson_low']}, {row['wilson_high']}]" + (f"; saved {path}" if path else ""))
            results.append({"episode": path, "label": label, "ended": ended, "steps": len(rec["action"]),
                            "overruns": rec.get("overruns", 0), "rate_hz": rate,
                            "command_success_min": cs_min, "command_success_mean": cs_mean,
                            "error": f"{type(error).__name__}: {error}" if error is not None else ""})
            if isinstance(error, MotionError):           # a failed motion, a user stop, a reflex: the arm is stopped
                log(f"rollout {ep + 1} ended with an error, the arm is stopped: {error}")
                if ep + 1 < o.episodes:                  # asked even with --label / --yes: a person looks first
                    ask("After the error: release the user stop if pressed, check the arm and the scene (Desk), reset "
                        "the scene, then press Enter for the next rollout (Ctrl-C ends the session) ")
                continue
            if error is not None:
                raise error
            if ep + 1 < o.episodes and not o.label:
                ask("Reset the scene, then press Enter for the next rollout ")
    finally:
        for c in (cameras or {}).values():
            c.close()
        backend.close()
    return results


# ----------------------------------------------------------------------------- --robot mujoco: the twin

def twin_episode(env, seed: int, rec: dict, ended: str) -> dict:
    """One twin rollout as eval_sim.rollout_batch reports an episode (its keys), plus why it ended. Gripper
    events come from the commanded gripper channel; steps count control steps since reset, as env.stage_steps."""
    import eval_sim
    acts = np.asarray(rec["action"], np.float32).reshape(-1, 8)
    return {**eval_sim.episode_record(env, seed, rec["instruction"], acts, [7]), "ended": ended}


def evaluate_twin(o: Options, policy=None, log=print, command: str | None = None, backend=None) -> dict:
    """`eval_real.py --robot mujoco`: o.episodes randomised rollouts of twin task o.task through run_episode,
    scored by the task's success predicate (backend: a twin.TwinBackend built by the caller; default, o's).
    Writes OUT/results.json as eval_sim.py does: {command, git_revision, config (the options as run: caps, dynamics,
    arm, the task's max_steps), tasks: {task: eval_sim.summarise}, wall_s}."""
    import eval_sim
    from world import twin
    check_options(o)
    if o.task not in twin.TASKS:
        raise RobotError(f"--robot mujoco needs a twin task (--task): {', '.join(twin.TASKS)}; got '{o.task}'")
    policy = policy or load_policy(o)  # before any renderer: torch imported after an EGL context segfaults
    check_layout(policy)
    bad = [c for c in policy.cameras if c not in twin.CAMERAS]
    if bad:
        raise RobotError(f"the checkpoint's camera(s) {bad} are not the twin's ({', '.join(twin.CAMERAS)})")
    backend = backend or twin.TwinBackend(o.task, list(policy.cameras), tuple(policy.image_size), o.dynamics, o.arm,
                                          workspace=workspace(o))
    cameras = {c: twin.TwinCamera(backend.env, c) for c in policy.cameras}
    run_o = dataclasses.replace(o, max_steps=min(o.max_steps, twin.TASKS[o.task].max_steps),  # never past the task's
                                fps=o.fps or float(policy.fps), n_action_steps=o.n_action_steps or policy.n_action_steps)
    out = Path(o.out if o.out != Options.out else f"results/twin/{o.task}")
    out.mkdir(parents=True, exist_ok=True)
    eps, t0 = [], time.time()
    for i, seed in enumerate(twin.eval_seeds(o.seed, o.episodes)):
        obs = backend.reset(seed)
        rec = {"images": {}, "qpos": [], "action": [], "instruction": o.instruction or obs["instruction"]}
        ended = run_episode(policy, backend, cameras, run_o, rec, clock=backend.clock, sleep=backend.sleep,
                            log=log, done=lambda: backend.env.success, record_images=i < o.video)
        eps.append(twin_episode(backend.env, seed, rec, ended))
        if i < o.video:
            save_rollout(out / "rollouts", policy, run_o, rec, 1.0 / twin.DT, log)
        k = sum(e["success"] for e in eps)
        log(f"episode {i + 1}/{o.episodes} seed {seed}: {eps[-1]['failure_type']} after {eps[-1]['length']} steps "
            f"({k}/{i + 1} so far)")
    wall = time.time() - t0
    summary = eval_sim.summarise(o.task, eps, wall)
    res = {"command": command or "python " + " ".join(sys.argv), "git_revision": data.git_revision(),
           "config": dataclasses.asdict(run_o), "tasks": {o.task: summary}, "wall_s": wall}
    data.atomic_write_bytes(out / "results.json", lambda f: f.write(json.dumps(res, indent=1).encode()))
    lo, hi = summary["wilson95"]
    log(f"{o.task}: {summary['successes']}/{summary['episodes']} = {summary['success_rate']:.2f}, Wilson 95% "
        f"[{lo:.2f}, {hi:.2f}] -> {out / 'results.json'}")
    return res


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    o = parse_options(argv)
    try:
        if o.robot == "mujoco":
            evaluate_twin(o, command="python eval_real.py " + " ".join(argv))
        else:
            run(o)
    except RobotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
