"""The real Franka's hardware for eval_real.py and record.py: the franky backend, the gripper worker and cameras.

numpy at import; franky, pyrealsense2 and OpenCV are imported when used (requirements-robot.txt), each failing
with the command that installs it. The safety layers these take part in, and why each exists, are listed in
eval_real.py's docstring; the numbers measured for them in robot/README.md.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import socket
import threading
import time

import numpy as np

from robot.franka import ARMS, GRIPPER_MAX_WIDTH, Arm


FCI_PORT = 1337           # libfranka's TCP command port (the gripper uses 1338)
FRANKY_HINT = ("pip install -r robot/requirements.txt (or: pip install franky-control; for a robot server other "
               "than version 10, franky's wheel index for it: robot/README.md)")
STALE_WIDTH_S = 1.0       # s; a gripper width older than this is reported, and reads failing this long end the reader


class RobotError(RuntimeError):
    """A set-up or safety problem with a message for the operator (printed without a traceback)."""


class MotionError(RobotError):
    """A motion the robot or franky's planner refused or aborted (a reflex, 'Motion planner failed ...'), the
    robot leaving the modes it moves in (the user stop, a reflex, guiding), or a gripper command that failed:
    the arm is stopped; the session goes on with the next rollout once the operator confirms."""


# franky's RobotMode names (libfranka's) where the robot itself holds the arm: nothing to stop, nothing moves
HELD_BY_ROBOT = {"Reflex": "a contact reflex", "UserStopped": "the user stop"}


def motion_errors(f) -> tuple:
    """What franky raises for a failed motion: its own exceptions, and plain RuntimeError for a planner failure
    (ruckig's error codes, e.g. -111 on a re-planned motion, -100 for a waypoint it cannot reach) and for
    DynamicsLimit.set. RobotError is ours, never franky's."""
    return (f.Exception, RuntimeError)


def require(module: str, hint: str):
    """Import an optional dependency or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and (e.name or module).split(".")[0] == module.split(".")[0]
        why = "is not installed" if missing else f"is installed but does not import ({e})"
        raise RobotError(f"{module} {why}: {hint}") from None


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


class GripperWorker:
    """The Franka Hand off the control thread. One thread keeps reading the width (latest() returns the newest
    value and its age, never waiting); another runs the newest requested command with franky's blocking calls.
    A request made while a command runs replaces any request still waiting: only the latest intent is sent, and
    request() itself never blocks. The width is read at most every `period` s (franky-sim answers in about 1 ms);
    a failed read is retried until the last good one is `stale_s` old, then latest() raises. Commands use
    franky's blocking calls on the worker's own thread (their futures need no keeping); one that fails is
    logged and kept for the loop (failures())."""

    def __init__(self, gripper, speed=0.05, force=20.0, log=print, period=0.02, stale_s=STALE_WIDTH_S):
        self.gripper, self.speed, self.force, self.log, self.period = gripper, speed, force, log, period
        self.cond = threading.Condition()                # guards everything below; never held across a gripper call
        self.width, self.t_width = float(gripper.width), time.monotonic()   # m, s: the first read, at connect
        self.pending, self.busy, self.running, self.error, self.stale_s = None, False, True, None, stale_s
        self.failed = []                                 # messages of commands that failed, until failures() takes them
        self.threads = [threading.Thread(target=fn, daemon=True, name=name)  # daemon: a hung call cannot block exit
                        for fn, name in ((self._read, "gripper-width"), (self._command, "gripper-command"))]
        for t in self.threads:
            t.start()

    def _read(self):
        while self.running:
            t0 = time.monotonic()
            try:
                w = float(self.gripper.width)            # about 100 ms on a real hand
            except Exception as e:                       # retried until the width is stale_s old
                if time.monotonic() - self.t_width > self.stale_s:
                    self.error = e
                    return
                w = None
            if w is not None:
                with self.cond:
                    self.width, self.t_width = w, time.monotonic()
            time.sleep(max(0.0, self.period - (time.monotonic() - t0)))

    def _command(self):
        while True:
            with self.cond:
                while self.pending is None and self.running:
                    self.cond.wait()
                if not self.running:
                    return
                closed, self.pending, self.busy = self.pending, None, True
            try:                                         # blocking: up to a full stroke (1.6 s at 0.05 m/s)
                if closed:
                    ok = self.gripper.grasp(0.0, self.speed, self.force, epsilon_inner=1.0, epsilon_outer=1.0)
                else:
                    ok = self.gripper.open(self.speed)
                why = None if ok else "the hand reports failure"
            except Exception as e:
                why = f"{type(e).__name__}: {e}"
            with self.cond:
                if why is not None:
                    self.failed.append(f"gripper {'close' if closed else 'open'} failed: {why}")
                    self.log(self.failed[-1])
                self.busy = False
                self.cond.notify_all()

    def failures(self) -> list:
        """The commands that failed since the last call (messages), without waiting."""
        with self.cond:
            out, self.failed = self.failed, []
        return out

    def latest(self) -> tuple:
        """(width in m, its age in s), without waiting."""
        if self.error is not None:
            raise RobotError(f"the gripper width could not be read for {self.stale_s:g} s: {type(self.error).__name__}: "
                             f"{self.error}")
        with self.cond:
            return self.width, time.monotonic() - self.t_width

    def request(self, closed: bool) -> None:
        with self.cond:
            self.pending = bool(closed)
            self.cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no command runs or waits; True when idle."""
        with self.cond:
            return self.cond.wait_for(lambda: self.pending is None and not self.busy, timeout)

    def close(self, timeout: float = 3.0) -> None:
        """Stop both threads once the last command requested has reached the hand (bounded wait), so the
        connection is released with nothing under way."""
        self.wait_idle(timeout)
        with self.cond:
            self.running, self.pending = False, None
            self.cond.notify_all()
        for t in self.threads:
            t.join(timeout)
        self.gripper = None


def plan_with_arm_limits(robot, arm: Arm) -> tuple:
    """franky 2.0.0 plans with the Panda's joint acceleration and jerk limits on every robot (its limit defaults,
    src/robot.cpp; read back in franky-sim: accelerations [15, 7.5, 10, 12.5, 15, 20, 20] rad/s^2), up to twice an
    FR3's (10 rad/s^2, 5000 rad/s^3). Lower franky's limits to the arm's (franky refuses values above its own,
    so the smaller of the two; settable only while no motion runs: at connect). Returns the velocity and
    acceleration limits the planner now scales by the dynamics factor, (7,) rad/s and rad/s^2."""
    out = []
    for limit, ours in ((robot.joint_velocity_limit, arm.dq_max), (robot.joint_acceleration_limit, arm.ddq_max),
                        (robot.joint_jerk_limit, arm.dddq_max)):
        value = np.minimum(np.asarray(limit.get(), float).ravel(), ours)
        limit.set(value)
        out.append(value)
    return out[0], out[1]


# libfranka's examples (examples_common setDefaultBehavior): Nm per joint, N / Nm per Cartesian axis. franky's
# own default (20 Nm / 30 N everywhere) is never relied on: the thresholds are set and logged at connect.
COLLISION_DEFAULT = ((20.0, 20.0, 18.0, 18.0, 16.0, 14.0, 12.0), (20.0, 20.0, 20.0, 25.0, 25.0, 25.0))


def set_collision_behavior(robot, torque, force, log=print) -> None:
    """Set the contact reflex thresholds explicitly (franky 2.0.0: Robot.set_collision_behavior(torque_thresholds
    (7,) Nm, force_thresholds (6,) N / Nm), lower = upper); settable only while no motion runs: at connect."""
    torque, force = [float(v) for v in torque], [float(v) for v in force]
    if len(torque) != 7 or len(force) != 6:
        raise RobotError(f"collision thresholds: 7 torques (Nm) and 6 forces (N, Nm); got {torque}, {force}")
    try:
        robot.set_collision_behavior(torque, force)
    except Exception as e:                               # franky raises RuntimeError or its own Exception
        raise RobotError(f"could not set the collision behaviour ({type(e).__name__}: {e}); not running without "
                         "it") from None
    log(f"collision behaviour set: joint torque thresholds {torque} Nm, Cartesian force thresholds {force} N/Nm")


def clear_errors(robot, f, log=print) -> None:
    """Start a rollout clean: a finished motion's pending error is raised and dropped here (after franky's hard
    stop, 'Move command preempted' would otherwise fail the next move at once), then a reflex is recovered from;
    a recovery that fails stops with what to do."""
    try:
        robot.join_motion(timeout=1.0)                   # returns at once when no motion runs
    except motion_errors(f) as e:
        log(f"the last motion ended with: {type(e).__name__}: {e} (cleared)")
    if robot.has_errors:
        log("robot reports errors; recovering")
        if not robot.recover_from_errors() or robot.has_errors:
            raise RobotError("the robot reports errors and automatic recovery failed: read the error in Desk and "
                             "clear it (e.g. guide a joint off its limit), then run again")


def waypoint_velocities(targets, q_from, v_from, dt, v_max, a_brake, lo, hi) -> np.ndarray:
    """(n, 7) rad/s: the velocity the arm passes each waypoint of a chunk with.

    franky's planner meets every waypoint at exactly its position and velocity: where a velocity cannot be
    reached from the waypoint before, it backs up for a run-up; where it cannot be braked to the next one's,
    it swings past and comes back (past a clamped target at a limit: 41 mrad at --dynamics 0.2). So:
    the central difference of the path q_from -> targets[0] -> ... (q_from, v_from: where the arm is and how
    it moves when the chunk replaces the running motion), 0 where a joint reverses or holds (so at a clamped
    target) and at the last waypoint (at rest if no chunk follows), at most v_max; then at most what can be
    reached from the waypoint before and braked to the next one's at a_brake (forward and backward passes),
    and toward a bound at most what brakes to rest before lo / hi."""
    t = np.asarray(targets, float)
    d = np.diff(np.vstack([q_from, t]), axis=0)          # d[k] = targets[k] - the point before it
    v = np.zeros_like(t)
    if len(t) > 1:
        d_in, d_out = d[:-1], d[1:]
        v[:-1] = np.where(d_in * d_out > 0, (d_in + d_out) / (2 * dt), 0.0)
    v = np.clip(v, -v_max, v_max)
    room = np.maximum(np.where(v > 0, hi - t, t - lo), 0.0)   # rad before the bound, in the direction of motion
    v = np.clip(v, -np.sqrt(2 * a_brake * room), np.sqrt(2 * a_brake * room))
    speed = np.where(np.asarray(v_from) * d[0] > 0, np.abs(v_from), 0.0)   # along the first segment
    for k in range(len(t)):                              # reachable from the waypoint before
        cap = np.sqrt(speed ** 2 + 2 * a_brake * np.abs(d[k]))
        v[k] = np.clip(v[k], -cap, cap)
        speed = np.abs(v[k])
    for k in range(len(t) - 2, -1, -1):                  # brakes to the next waypoint's velocity
        cap = np.sqrt(v[k + 1] ** 2 + 2 * a_brake * np.abs(d[k + 1]))
        v[k] = np.clip(v[k], -cap, cap)
    return v


class FrankyBackend:
    """FR3 / Panda through franky. The backend interface: read_state, send_chunk, set_gripper, stop, close, and
    optionally begin (before a rollout), check (every control step), motion_finished (homing) and
    gripper_stroke_s (the gate's cooldown)."""

    def __init__(self, ip, arm="fr3", dynamics=0.2, realtime="enforce", gripper_speed=0.05, gripper_force=20.0,
                 recover=True, joint_margin=0.05, log=print, collision=None):
        f = self.f = require("franky", FRANKY_HINT)      # cheapest check first: no network needed
        check_reachable(ip)
        rt = f.RealtimeConfig.Ignore if realtime == "ignore" else f.RealtimeConfig.Enforce
        limits = ARMS[arm]
        try:
            self.robot = f.Robot(ip, realtime_config=rt)
            self.robot.relative_dynamics_factor = dynamics
            vel, acc = plan_with_arm_limits(self.robot, limits)
            set_collision_behavior(self.robot, *(collision or COLLISION_DEFAULT), log=log)
            if recover:                                  # e.g. a reflex from the last session; never moves the arm
                clear_errors(self.robot, f, log)
            gripper = f.Gripper(ip)
        except f.RealtimeException as e:
            raise RobotError(f"{e} -- set up a PREEMPT_RT kernel (robot/README.md) or pass --realtime ignore") from None
        except f.IncompatibleVersionException as e:
            raise RobotError(f"{e} -- install the franky wheel built for your robot's server version: {FRANKY_HINT}") from None
        except f.Exception as e:
            raise RobotError(f"cannot connect to the Franka at {ip}: {type(e).__name__}: {e}") from None
        except RobotError:
            raise
        except RuntimeError as e:                        # franky's DynamicsLimit.set raises plain RuntimeError
            raise RobotError(f"setting up the Franka at {ip} failed: {type(e).__name__}: {e}") from None
        self.hand = GripperWorker(gripper, gripper_speed, gripper_force, log)
        self.v_max = 0.8 * dynamics * vel                # franky's planner rejects waypoint velocities above its scaled limits
        self.a_brake = 0.5 * dynamics * acc              # rad/s^2: half the planner's deceleration, for waypoint_velocities
        self.lo, self.hi = np.add(limits.q_min, joint_margin), np.subtract(limits.q_max, joint_margin)
        self.gripper_stroke_s = GRIPPER_MAX_WIDTH / gripper_speed   # s, a full open or close
        self.log, self.stale, self.goal = log, False, None          # goal: where the last motion sent ends (rad)

    def begin(self):
        self.goal = None
        for failed in self.hand.failures():              # a command the last rollout sent, failed after its end
            self.log(f"{failed} (after the last rollout ended)")
        clear_errors(self.robot, self.f, self.log)

    def read_state(self):
        q = np.asarray(self.robot.current_joint_state.position, float)
        width, age = self.hand.latest()                  # never waits on the hand
        if age > STALE_WIDTH_S and not self.stale:
            self.log(f"WARNING: the gripper width was last read {age:.1f} s ago (does the hand answer?)")
        self.stale = age > STALE_WIDTH_S
        return q, float(np.clip(width / GRIPPER_MAX_WIDTH, 0.0, 1.0))

    def send_chunk(self, targets, dt):
        """All targets as one waypoint motion replacing the running one; intermediate ones passed with velocity.
        A chunk that only holds the pose the last motion ends at (at rest) is not sent: re-planning it from the
        robot's reported velocity, which lags the plan, would only add overshoot (a joint held at a limit)."""
        f, t = self.f, np.asarray(targets, float)
        if self.goal is not None and np.abs(t - self.goal).max() < 1e-9:
            self.motion_finished()                       # nothing new to send; a failed motion still raises here
            return
        s = self.robot.state                             # the commanded state the new motion starts from
        v = waypoint_velocities(t, np.asarray(s.q_d, float), np.asarray(s.dq_d, float), dt, self.v_max,
                                self.a_brake, self.lo, self.hi)
        ms = f.Duration(max(1, int(round(dt * 1000))))
        wps = [f.JointWaypoint(f.JointState(t[k], v[k]), minimum_time=ms) for k in range(len(t))]
        self.goal = None
        try:
            self.robot.move(f.JointWaypointMotion(wps), asynchronous=True)   # errors of the last one surface here
        except motion_errors(f) as e:
            raise MotionError(f"the motion failed: {type(e).__name__}: {e}") from None
        self.goal = t[-1]

    def set_gripper(self, closed: bool):
        self.hand.request(closed)                        # the worker sends it; the loop goes on at once

    def motion_finished(self) -> bool:
        """Whether the running motion has ended, without waiting; one that failed raises why (reflex, limit).
        franky 2.0.0's poll_motion() is join_motion(0): True once finished (its docstring says the reverse)."""
        try:
            return bool(self.robot.poll_motion())
        except motion_errors(self.f) as e:
            mode = self.mode()
            raise MotionError(f"the motion failed: {type(e).__name__}: {e} (robot mode {mode}; see Desk; the next "
                              "rollout recovers)") from None

    def mode(self) -> str:
        """franky's RobotState.robot_mode by name (Idle, Move, Reflex, UserStopped, Guiding, ...); '?' unread."""
        try:
            return self.robot.state.robot_mode.name
        except Exception:                                # the state could not be read (connection lost)
            return "?"

    def check(self) -> float:
        """Every control step, without waiting: a motion that failed (motion_finished), a robot mode other than
        Idle or Move (a reflex, the user stop, even pressed and released while the arm stood still; guiding)
        and a gripper command that failed each raise MotionError. Returns franky's control_command_success_rate
        while a motion runs (the share of the last 100 commands the robot received; 0 with no motion), else nan."""
        self.motion_finished()
        s = self.robot.state
        mode = s.robot_mode.name
        if mode not in ("Idle", "Move"):
            why = HELD_BY_ROBOT.get(mode, "not a mode the arm moves in: a guiding button, Desk?")
            raise MotionError(f"the robot is in mode {mode} ({why}); the arm is stopped. Release what stopped it and "
                              "check the arm in Desk; the next rollout recovers")
        failed = self.hand.failures()
        if failed:
            raise MotionError("; ".join(failed) + " (the hand did not do what was commanded)")
        return float(s.control_command_success_rate) if mode == "Move" else math.nan

    def stop(self):
        """Bring the arm to rest; never raises (it runs in `finally`), but says loudly when it fails. In Reflex or
        UserStopped mode the robot holds the arm itself and refuses motions and franky's stop() alike: said so,
        nothing sent (the next rollout's begin() recovers)."""
        self.goal = None
        if self._held():
            return
        try:
            self.robot.move(self.f.JointStopMotion(), asynchronous=True)
            if self.robot.join_motion(timeout=5.0):
                return
            self.log("stop: the stop motion did not end within 5 s; using franky's hard stop")
        except BaseException as e:                       # a failed previous motion surfaces here
            self.log(f"stop: {type(e).__name__}: {e}; using franky's hard stop")
        try:
            self.robot.stop()
        except BaseException as e:
            if not self._held():                         # a reflex during the stop also holds the arm
                self.log(f"WARNING: could not stop the robot ({type(e).__name__}: {e}); use the user stop")
            return
        try:                                             # the hard stop leaves an error pending for the next move
            clear_errors(self.robot, self.f, self.log)
        except BaseException as e:
            self.log(f"WARNING: after the hard stop: {e}")

    def _held(self) -> bool:
        """Whether the robot holds the arm itself (HELD_BY_ROBOT); says so."""
        mode = self.mode()
        if mode in HELD_BY_ROBOT:
            self.log(f"stop: the arm is already stopped by {HELD_BY_ROBOT[mode]} (robot mode {mode}); nothing sent")
        return mode in HELD_BY_ROBOT

    def close(self):
        self.hand.close()
        self.robot = self.hand = None                    # dropping franky's objects closes the connections


class DryRunBackend:
    """Reads the real robot, sends nothing: prints what would have been sent."""

    def __init__(self, backend, log=print):
        self.backend, self.log = backend, log
        self.gripper_stroke_s = getattr(backend, "gripper_stroke_s", 0.0)

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


# ----------------------------------------------------------------------------- cameras

class Camera:
    """The newest frame of a capture thread; read() fails when it is older than `max_age` s (a stalled or
    unplugged camera: about three frame periods, 0.1 s at 30 fps; `timeout` when None), so the control loop
    never blocks on a camera nor steers on a frozen image. `last_age` is the age of the frame read() returned
    (s, from its arrival on the capture thread); `timeout` also bounds the wait for the first frame."""

    def __init__(self, name, grab, close=lambda: None, timeout=1.5, max_age=None):
        self.name, self.grab, self._close, self.timeout = name, grab, close, timeout
        self.max_age = timeout if max_age is None else max_age
        self.frame, self.t, self.error, self.running, self.last_age = None, -math.inf, None, True, math.nan
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
        frame, age = self.frame, time.monotonic() - self.t
        if age > self.max_age:
            raise RobotError(f"camera {self.name}: no new frame for {age:.2f} s (frames older than {self.max_age:g} s "
                             "are refused: stalled or unplugged? USB 3 cable, bandwidth); the arm was stopped")
        self.last_age = age
        return frame

    def close(self):
        self.running = False
        with contextlib.suppress(Exception):
            self._close()


def open_camera(spec: str, timeout: float, used: set, max_age=None) -> Camera:
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
        return Camera(spec, grab, pipe.stop, timeout, max_age)
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
        return Camera(spec, grab, cap.release, timeout, max_age)
    raise RobotError(f"unknown camera '{spec}': use realsense[:SERIAL], opencv:N or none")


def open_cameras(spec: str, names: list, timeout: float, max_age=None) -> dict:
    """{checkpoint camera name: Camera}, in the checkpoint's camera order; {} for 'none'."""
    if spec == "none":
        return {}
    specs = [s.strip() for s in spec.split(",")]
    if len(specs) != len(names):
        raise RobotError(f"--camera gives {len(specs)} camera(s) but the checkpoint uses {len(names)}: {names}")
    cams, used = {}, set()
    try:
        for name, s in zip(names, specs):
            cams[name] = open_camera(s, timeout, used, max_age)
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
