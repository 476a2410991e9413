"""Run a trained policy on a real Franka (FR3 or Panda) through franky, safely, and record every rollout.

  python eval_real.py --ckpt CKPT --ip 172.16.0.2 --instruction "put the red block on the pad" --dry-run
  python eval_real.py --ckpt CKPT --ip 172.16.0.2 --instruction "..."              # live, dynamics 0.2
  franky-sim -s mujoco &                                                          # no robot: the protocol twin
  python eval_real.py --ckpt CKPT --ip 127.0.0.1 --realtime ignore --camera none --instruction "..."
  python eval_real.py --ckpt CKPT --robot mujoco --task franka_pick_place --episodes 50   # the MuJoCo twin
  python eval_real.py record --robot franky|mujoco --task NAME --instruction "..." --out DIR  # demonstrations

--robot mujoco (twin.py) runs the same loop, limits and caps on the simulated Franka with rendered cameras and
a simulated clock (as fast as the CPU allows), over randomised evaluation seeds, scored by the task's success
predicate; it writes OUT/results.json (default OUT: results/twin/TASK). `record` is in record.py.

Each rollout: connect (the address is probed first, so a wrong one fails in seconds), open the gripper and
move to the ready pose, then at a fixed rate (default: the checkpoint's fps, held by the clock, not by sleeping
a fixed dt) read joints + gripper + cameras, and every `n_action_steps` steps ask the policy for a chunk and
send the executed part as ONE franky waypoint motion (a new point-to-point motion per step would stop the
arm at every target). The rollout is saved in the project's episode format with a video, the operator's label
is asked, and a row is appended to OUT/trials.csv with the success rate so far and its Wilson 95% interval.

Safety layers, all on by default, each with a flag:
  * joint targets clamped to the documented limits of --arm minus --joint-margin (0.05 rad);
  * every target within --max-joint-speed / fps (0.5 rad/s -> 0.025 rad at 20 Hz) of the previous one, the
    first one of a chunk of the *measured* joints, so target k is at most (k+1) caps from where the arm is;
  * franky's relative_dynamics_factor --dynamics 0.2 (velocity, acceleration, jerk at 20% of the limits);
  * NaN / inf actions stop the rollout; the gripper is binarised with hysteresis + cooldown and commanded
    only on change; Ctrl-C is deferred to the end of the current step (a second one aborts at once);
  * whatever ends the rollout (last step, Ctrl-C, an exception), `finally` stops the motion (JointStopMotion,
    then franky's hard stop if that fails) and leaves the arm still;
  * --dry-run connects and reads the real state, runs the loop and prints the targets, moves nothing.

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

import argparse
import contextlib
import csv
import dataclasses
import importlib
import math
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import data

# ----------------------------------------------------------------------------- Franka facts

@dataclass(frozen=True)
class Arm:
    q_min: tuple
    q_max: tuple
    dq_max: tuple


_FR3_DQ = (2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26)
ARMS = {  # Franka docs, "control parameters"; rad and rad/s
    "fr3": Arm((-2.9007, -1.8361, -2.9007, -3.0770, -2.8763, 0.4398, -3.0508),
               (2.9007, 1.8361, 2.9007, -0.1169, 2.8763, 4.6216, 3.0508), _FR3_DQ),
    "fr3-pre59": Arm((-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159),  # FR3, system < 5.9
                     (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159), _FR3_DQ),
    "panda": Arm((-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),
                 (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973), (2.175,) * 4 + (2.61,) * 3),
}
READY = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])
GRIPPER_MAX_WIDTH = 0.08  # m; qpos gripper = width / this
FCI_PORT = 1337           # libfranka's TCP command port (the gripper uses 1338)
FRANKY_HINT = ("pip install -r requirements-robot.txt (or: pip install franky-control; for a robot server "
               "other than version 10, the wheel for your libfranka: README 'Running on a real Franka')")


class RobotError(RuntimeError):
    """A set-up or safety problem with a message for the operator (printed without a traceback)."""


def require(module: str, hint: str):
    """Import an optional dependency or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and (e.name or module).split(".")[0] == module.split(".")[0]
        why = "is not installed" if missing else f"is installed but does not import ({e})"
        raise RobotError(f"{module} {why}: {hint}") from None


# ----------------------------------------------------------------------------- options (one dataclass -> flags)

def opt(default, help, **kw):
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class Options:
    ckpt: str = opt("", "checkpoint to run (model.py Policy.load)")
    instruction: str = opt("", "language instruction given to the policy (--robot mujoco: default the layout's)")
    task: str = opt("real", "task name stored in the episode and trials.csv (--robot mujoco: a twin task)")
    robot: str = opt("franky", "robot backend", choices=["franky", "mujoco"])
    ip: str = opt("", "robot FCI address (franky-sim prints its own, usually 127.0.0.1)")
    arm: str = opt("fr3", "joint limits to enforce", choices=sorted(ARMS))
    realtime: str = opt("enforce", "'ignore' for kernels without PREEMPT_RT and for franky-sim",
                        choices=["enforce", "ignore"])
    camera: str = opt("realsense", "one per checkpoint camera, comma separated: realsense[:SERIAL], "
                                   "opencv:N, or none (black images, nothing recorded)")
    camera_timeout: float = opt(1.5, "seconds without a new frame before a camera counts as stalled")
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
    max_joint_speed: float = opt(0.5, "rad/s; per-step target change cap = this / fps")
    gripper_close_above: float = opt(0.6, "close when 1 - gripper action rises above this")
    gripper_open_below: float = opt(0.4, "open when 1 - gripper action falls below this")
    gripper_cooldown: float = opt(1.0, "seconds between two gripper commands")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    for f in dataclasses.fields(Options):
        kw = dict(default=f.default, help=f.metadata["help"] + f" (default: {f.default!r})")
        if f.type == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"int": int, "float": float}.get(f.type, str)
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    return p


def check_options(o: Options) -> None:
    if not 0 < o.dynamics <= 1:
        raise RobotError(f"--dynamics must be in (0, 1] (franky's relative_dynamics_factor); got {o.dynamics}")
    if not (0 <= o.gripper_open_below < o.gripper_close_above <= 1):
        raise RobotError("need 0 <= --gripper-open-below < --gripper-close-above <= 1")
    if o.joint_margin < 0 or o.max_joint_speed <= 0 or o.max_steps < 1 or o.episodes < 1 or o.fps < 0:
        raise RobotError("--joint-margin >= 0, --max-joint-speed > 0, --max-steps >= 1, --episodes >= 1, --fps >= 0")
    if not 0 <= o.noise_scale <= 1:
        raise RobotError(f"--noise-scale must be in [0, 1]; got {o.noise_scale}")


# ----------------------------------------------------------------------------- robot backends

def check_reachable(ip: str, port: int = FCI_PORT, timeout: float = 2.0) -> None:
    """Probe the FCI port: libfranka itself needs about a minute to give up on an address with nobody behind it."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        raise RobotError(f"nothing accepts connections at {ip}:{port} (refused): the robot is up but FCI is not "
                         "active (Desk: unlock the joints, activate FCI), --ip names another machine, or "
                         "franky-sim is not running (use the address it prints)") from None
    except socket.timeout:
        raise RobotError(f"no answer from {ip}:{port} within {timeout:g} s: check the cable to the Control box "
                         f"(not the arm base), this PC's static address in the robot's subnet, `ping {ip}`") from None
    except OSError as e:
        raise RobotError(f"cannot reach {ip}:{port} ({e}); check --ip and this PC's network set-up") from None


class FrankyBackend:
    """FR3 / Panda through franky: read_state, send_chunk, set_gripper, stop (the whole backend interface)."""

    def __init__(self, ip, arm="fr3", dynamics=0.2, realtime="enforce", gripper_speed=0.05, gripper_force=20.0,
                 recover=True, log=print):
        f = self.f = require("franky", FRANKY_HINT)      # cheapest check first: no network needed
        check_reachable(ip)
        rt = f.RealtimeConfig.Ignore if realtime == "ignore" else f.RealtimeConfig.Enforce
        try:
            self.robot = f.Robot(ip, realtime_config=rt)
            self.robot.relative_dynamics_factor = dynamics
            if self.robot.has_errors and recover:        # e.g. a reflex from the last session; never moves the arm
                log("robot reports errors; recovering")
                self.robot.recover_from_errors()
            self.gripper = f.Gripper(ip)
        except f.RealtimeException as e:
            raise RobotError(f"{e} -- set up a PREEMPT_RT kernel (README) or pass --realtime ignore") from None
        except f.IncompatibleVersionException as e:
            raise RobotError(f"{e} -- install the franky wheel built for your robot's libfranka: {FRANKY_HINT}") from None
        except f.Exception as e:
            raise RobotError(f"cannot connect to the Franka at {ip}: {type(e).__name__}: {e}") from None
        # franky's planner rejects waypoint velocities above its (scaled) limits: stay at 80% of them
        limit = np.minimum(np.asarray(self.robot.joint_velocity_limit.get(), float), ARMS[arm].dq_max)
        self.v_max = 0.8 * dynamics * limit
        self.speed, self.force, self.log = gripper_speed, gripper_force, log

    def read_state(self):
        q = np.asarray(self.robot.current_joint_state.position, float)
        return q, float(np.clip(self.gripper.width / GRIPPER_MAX_WIDTH, 0.0, 1.0))

    def send_chunk(self, targets, dt):
        """All targets as one waypoint motion replacing the running one; intermediate ones passed with velocity."""
        f, t = self.f, np.asarray(targets, float)
        v, d = np.zeros_like(t), np.diff(t, axis=0)
        if len(t) > 1:
            v[0] = d[0] / dt
            # central difference, but 0 where a joint reverses or holds: the arm never overshoots a target
            # (a clamped one sits right at the limit margin)
            v[1:-1] = np.where(d[:-1] * d[1:] > 0, (d[:-1] + d[1:]) / (2 * dt), 0.0)
        v = np.clip(v, -self.v_max, self.v_max)          # last stays 0: at rest if no new chunk comes
        ms = f.Duration(max(1, int(round(dt * 1000))))
        wps = [f.JointWaypoint(f.JointState(t[k], v[k]), minimum_time=ms) for k in range(len(t))]
        self.robot.move(f.JointWaypointMotion(wps), asynchronous=True)   # errors of the last one surface here

    def set_gripper(self, closed: bool):
        # asynchronous so the loop keeps its rate; the cooldown keeps commands from queueing up. The future is
        # dropped at once (the command still runs): one kept past its Gripper hangs the next connection (tried).
        if closed:
            self.gripper.grasp_async(0.0, self.speed, self.force, epsilon_inner=1.0, epsilon_outer=1.0)
        else:
            self.gripper.open_async(self.speed)

    def stop(self):
        """Bring the arm to rest; never raises (it runs in `finally`), but says loudly when it fails."""
        try:
            self.robot.move(self.f.JointStopMotion(), asynchronous=True)
            if self.robot.join_motion(timeout=5.0):
                return
        except BaseException as e:                       # a failed previous motion surfaces here
            self.log(f"stop: {type(e).__name__}: {e}; using franky's hard stop")
        try:
            self.robot.stop()
        except BaseException as e:
            self.log(f"WARNING: could not stop the robot ({type(e).__name__}: {e}); use the user stop")

    def close(self):
        self.robot = self.gripper = None                 # dropping franky's objects closes the connections


class DryRunBackend:
    """Reads the real robot, sends nothing: prints what would have been sent."""

    def __init__(self, backend, log=print):
        self.backend, self.log = backend, log

    def read_state(self):
        return self.backend.read_state()

    def send_chunk(self, targets, dt):
        fmt = lambda a: np.array2string(np.asarray(a), precision=3, suppress_small=True)
        self.log(f"[dry-run] {len(targets)} targets at {1 / dt:.1f} Hz: first {fmt(targets[0])} last {fmt(targets[-1])}")

    def set_gripper(self, closed):
        self.log(f"[dry-run] gripper {'close' if closed else 'open'}")

    def stop(self):
        pass                                             # nothing was sent, nothing to stop

    def close(self):
        self.backend.close()


def make_backend(o: Options, log=print):
    if o.robot == "mujoco":
        raise RobotError("--robot mujoco runs through twin.evaluate (python eval_real.py --robot mujoco ...)")
    if not o.ip:
        raise RobotError("--ip is required (the robot's FCI address)")
    return FrankyBackend(o.ip, o.arm, o.dynamics, o.realtime, o.gripper_speed, o.gripper_force,
                         recover=not o.dry_run, log=log)


# ----------------------------------------------------------------------------- cameras

class Camera:
    """The newest frame of a capture thread; read() fails when it is older than `timeout` (stalled, unplugged),
    so the control loop never blocks on a camera."""

    def __init__(self, name, grab, close=lambda: None, timeout=1.5):
        self.name, self.grab, self._close, self.timeout = name, grab, close, timeout
        self.frame, self.t, self.error, self.running = None, -math.inf, None, True
        self.first = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()  # daemon: a hung driver call cannot block exit
        if not self.first.wait(timeout) or self.error is not None:
            self.close()
            raise RobotError(f"camera {name}: " + (f"failed ({self.error})" if self.error else
                                                   f"no frame within {timeout:g} s (stalled or unplugged)"))

    def _run(self):
        while self.running:
            try:
                frame = np.asarray(self.grab())
            except Exception as e:
                self.error = e
                self.first.set()
                return
            self.frame, self.t = frame, time.monotonic()
            self.first.set()

    def read(self) -> np.ndarray:
        if self.error is not None:
            raise RobotError(f"camera {self.name} failed: {self.error}")
        age = time.monotonic() - self.t
        if age > self.timeout:
            raise RobotError(f"camera {self.name}: no new frame for {age:.1f} s (stalled or unplugged)")
        return self.frame

    def close(self):
        self.running = False
        with contextlib.suppress(Exception):
            self._close()


def open_camera(spec: str, timeout: float, used: set) -> Camera:
    kind, _, arg = spec.partition(":")
    if kind == "realsense":
        rs = require("pyrealsense2", "pip install pyrealsense2 (needs libusb-1.0 on the system)")
        serials = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        free = [s for s in serials if s not in used]     # checked first: pipeline.start needs 15 s to fail
        if not free or (arg and arg not in free):
            raise RobotError(f"RealSense {arg or 'camera'} not found (connected: {serials or 'none'}); check the USB 3 cable")
        serial = arg or free[0]
        used.add(serial)
        pipe, cfg = rs.pipeline(), rs.config()
        cfg.enable_device(serial)
        cfg.enable_stream(rs.stream.color, 640, 480, rs.format.rgb8, 30)
        pipe.start(cfg)
        grab = lambda: np.asanyarray(pipe.wait_for_frames(int(timeout * 1000)).get_color_frame().get_data()).copy()
        return Camera(spec, grab, pipe.stop, timeout)
    if kind == "opencv":
        cv2 = require("cv2", "pip install opencv-python-headless")
        cap = cv2.VideoCapture(int(arg or 0))
        if not cap.isOpened():
            raise RobotError(f"OpenCV cannot open camera {arg or 0} (/dev/video{arg or 0}; `v4l2-ctl --list-devices`)")

        def grab():
            ok, frame = cap.read()
            if not ok:
                raise RuntimeError("cv2.VideoCapture.read failed")
            return frame[..., ::-1].copy()               # BGR -> RGB
        return Camera(spec, grab, cap.release, timeout)
    raise RobotError(f"unknown camera '{spec}': use realsense[:SERIAL], opencv:N or none")


def open_cameras(spec: str, names: list, timeout: float) -> dict:
    """{checkpoint camera name: Camera}, in the checkpoint's camera order; {} for 'none'."""
    if spec == "none":
        return {}
    specs = [s.strip() for s in spec.split(",")]
    if len(specs) != len(names):
        raise RobotError(f"--camera gives {len(specs)} camera(s) but the checkpoint uses {len(names)}: {names}")
    cams, used = {}, set()
    try:
        for name, s in zip(names, specs):
            cams[name] = open_camera(s, timeout, used)
    except BaseException:
        for c in cams.values():
            c.close()
        raise
    return cams


def resize(img, hw) -> np.ndarray:
    img = np.asarray(img, np.uint8)
    if img.shape[:2] == tuple(hw):
        return img
    from PIL import Image                                # Pillow comes with torchvision
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))


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


class GripperGate:
    """Binarise the gripper action (1 = open) with hysteresis and a cooldown, so a value near 0.5 or a short
    spike cannot make the gripper chatter; update() returns the new state only when it changes."""

    def __init__(self, closed, close_above=0.6, open_below=0.4, cooldown=1.0):
        self.closed, self.close_above, self.open_below, self.cooldown = bool(closed), close_above, open_below, cooldown
        self.last = -math.inf

    def update(self, action, now):
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
                done=None):
    """One rollout, appended step by step to rec['images'|'qpos'|'action'] (so a failure keeps what was
    recorded); returns why it ended. The arm is stopped on every way out. `done()` (the twin's success
    predicate) ends the rollout early with 'done'."""
    fps = o.fps or float(policy.fps)
    dt = 1.0 / fps
    n_exec = 1 if o.query == "step" else max(1, min(o.n_action_steps or policy.n_action_steps, policy.horizon))
    arm = ARMS[o.arm]
    lo, hi = np.add(arm.q_min, o.joint_margin), np.subtract(arm.q_max, o.joint_margin)
    hw = tuple(policy.image_size)
    black = {c: np.zeros(hw + (3,), np.uint8) for c in policy.cameras}
    policy.reset()
    rec.setdefault("overruns", 0)
    with deferred_interrupt(log) as interrupted:
        try:
            homed = o.home and not o.dry_run
            if homed:
                go_home(backend, clock, sleep, interrupted)
            elif o.home:
                log("[dry-run] would open the gripper and move to the ready pose")
            closed = False if homed else backend.read_state()[1] < 0.5
            gate = GripperGate(closed, o.gripper_close_above, o.gripper_open_below, o.gripper_cooldown)
            chunk = targets = prev_qpos = None
            start, next_t = 0, clock()
            for step in range(o.max_steps):
                if interrupted.is_set():
                    return "ctrl-c"
                if done is not None and done():
                    return "done"
                q, width = backend.read_state()
                images = {c: resize(cam.read(), hw) for c, cam in cameras.items()}
                qpos = np.append(q, width).astype(np.float32)
                if chunk is None or step - start >= len(chunk):  # prev_qpos: one control step earlier (--velocity)
                    obs = {"images": {**black, **images}, "qpos": qpos,
                           "prev_qpos": qpos if prev_qpos is None else prev_qpos, "instruction": rec["instruction"]}
                    if o.query == "step":
                        chunk = np.asarray(policy.select_action(obs), float)[None]
                    else:
                        chunk = np.asarray(policy.predict_chunk([obs])[0], float)[:n_exec]
                    if interrupted.is_set():             # Ctrl-C during inference: send nothing more
                        return "ctrl-c"
                    if chunk.ndim != 2 or chunk.shape[1] != 8 or len(chunk) == 0:
                        raise RobotError(f"policy returned a chunk of shape {chunk.shape}; expected (n, 8)")
                    targets = safe_targets(chunk[:, :7], q, lo, hi, o.max_joint_speed * dt)
                    backend.send_chunk(targets, dt)
                    start = step
                i = step - start
                change = gate.update(chunk[i, 7], clock())
                if change is not None:
                    backend.set_gripper(change)
                for c, img in images.items():
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
                    next_t = clock()                     # late: re-anchor instead of bursting to catch up
            return "max-steps"
        finally:
            backend.stop()


def go_home(backend, clock=time.monotonic, sleep=time.sleep, interrupted=None, timeout=30.0, tol=0.03):
    """Open the gripper and move to the ready pose as one planned motion; wait (bounded) until there."""
    backend.set_gripper(False)
    backend.send_chunk(READY[None], 1.0)
    deadline = clock() + timeout
    while clock() < deadline:
        if interrupted is not None and interrupted.is_set():
            return                                       # the loop sees the flag and ends the rollout
        if np.abs(backend.read_state()[0] - READY).max() < tol:
            return
        sleep(0.1)
    raise RobotError(f"the arm did not reach the ready pose within {timeout:g} s (blocked? reflex? check Desk)")


# ----------------------------------------------------------------------------- recording and trials

wilson = data.wilson  # Wilson score 95% interval, shared with eval_sim.py


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
    if images:
        try:
            import imageio.v2 as imageio
            imageio.mimwrite(path.with_suffix(".mp4"), list(np.concatenate([images[c] for c in cams], axis=2)), fps=fps)
        except Exception as e:                           # the episode is saved; a missing codec is not fatal
            log(f"video not written ({type(e).__name__}: {e}); pip install imageio imageio-ffmpeg")
    return path


TRIAL_COLUMNS = ["time", "ckpt", "task", "instruction", "label", "steps", "successes_so_far", "trials_so_far",
                 "rate", "wilson_low", "wilson_high", "episode"]


def append_trial(csv_path: Path, row: dict) -> dict:
    """Append a row; the counts cover rows with the same ckpt and task labelled success or fail."""
    rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
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


# ----------------------------------------------------------------------------- main

def load_policy(o: Options):
    if not o.ckpt or not Path(o.ckpt).is_file():
        raise RobotError(f"--ckpt: no checkpoint at '{o.ckpt}'")
    import torch
    torch.manual_seed(o.seed)
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
        cameras = open_cameras(o.camera, list(policy.cameras), o.camera_timeout) if cameras is None else cameras
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
            log(f"rollout ended ({ended}) after {len(rec['action'])} steps, {rec.get('overruns', 0)} late")
            path = save_rollout(out, policy, o, rec, fps, log) if rec["action"] else None
            if error is not None:
                label = "aborted" if isinstance(error, KeyboardInterrupt) else "error"
            elif not rec["action"]:
                label = "aborted"                        # e.g. Ctrl-C while homing: nothing to judge
            else:
                label = "dry-run" if o.dry_run else o.label or ask_label(ask)
            row = append_trial(out / "trials.csv", {
                "time": time.strftime("%Y-%m-%d %H:%M:%S"), "ckpt": o.ckpt, "task": o.task, "instruction": instruction,
                "label": label, "steps": len(rec["action"]), "episode": path.name if path else ""})
            log(f"{label}: {row['successes_so_far']}/{row['trials_so_far']} so far, 95% Wilson interval "
                f"[{row['wilson_low']}, {row['wilson_high']}]" + (f"; saved {path}" if path else ""))
            results.append({"episode": path, "label": label, "ended": ended, "steps": len(rec["action"]),
                            "overruns": rec.get("overruns", 0)})
            if error is not None:
                raise error
            if ep + 1 < o.episodes and not o.label:
                ask("Reset the scene, then press Enter for the next rollout ")
    finally:
        for c in (cameras or {}).values():
            c.close()
        backend.close()
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["record"]:
        import record
        return record.main(argv[1:])
    o = Options(**vars(build_parser().parse_args(argv)))
    try:
        if o.robot == "mujoco":
            import twin
            twin.evaluate(o)
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
