"""eval_real.py's loop logic with fakes: injected clock (no timed tests), fake policy, backend and cameras.

Also the fast failures: nothing listening at the robot address, franky / camera libraries missing.
"""
import csv
import enum
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import eval_real as er  # noqa: E402
from robot import hardware as hw  # noqa: E402
from robot import franka  # noqa: E402
from robot import record  # noqa: E402
from guard_poses import down_pose, lowest_fingertip  # noqa: E402


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        assert s >= 0
        self.t += s


class FakePolicy:
    """The Policy interface; `chunk_fn(call_index, obs) -> (horizon, 8)` decides the actions."""
    fps, horizon, n_action_steps = 10.0, 8, 4
    action_names = [f"joint{i}" for i in range(7)] + ["gripper"]
    qpos_names = list(action_names)
    gripper_indices = [7]
    image_size = (24, 32)

    def __init__(self, chunk_fn=None, cameras=("front",), clock=None, infer_s=0.0):
        self.cameras, self.calls, self.obs = list(cameras), 0, []
        self.chunk_fn = chunk_fn or (lambda k, obs: np.tile(np.append(er.READY, 1.0), (self.horizon, 1)))
        self.clock, self.infer_s = clock, infer_s

    def reset(self):
        self.calls = 0

    def predict_chunk(self, obs_batch, generator=None):
        self.obs.append(obs_batch[0])
        if self.clock:
            self.clock.t += self.infer_s                 # inference takes time on the injected clock
        out = np.asarray(self.chunk_fn(self.calls, obs_batch[0]), np.float32)
        self.calls += 1
        return out[None]

    def select_action(self, obs):
        return self.predict_chunk([obs])[0][0]


class FakeBackend:
    """Records every call; the arm 'reaches' the last target of a chunk at once."""

    def __init__(self, q=er.READY, width=1.0, clock=None, fail_read_at=None):
        self.q, self.width, self.calls, self.reads = np.array(q, float), width, [], []
        self.clock, self.fail_read_at = clock, fail_read_at

    def read_state(self):
        self.reads.append(self.clock() if self.clock else None)
        if self.fail_read_at is not None and len(self.reads) == self.fail_read_at:
            raise self.fail_read_exc
        return self.q.copy(), self.width

    fail_read_exc = RuntimeError("robot state lost")

    def send_chunk(self, targets, dt):
        self.calls.append(("send", np.array(targets), dt))
        self.q = np.array(targets[-1], float)

    def set_gripper(self, closed):
        self.calls.append(("gripper", closed))

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))

    def kinds(self):
        return [c[0] for c in self.calls]


class FakeCamera:
    def __init__(self, fail_at=None):
        self.n, self.fail_at = 0, fail_at

    def read(self):
        self.n += 1
        if self.fail_at is not None and self.n >= self.fail_at:
            raise er.RobotError("camera front: no new frame for 1.6 s (stalled or unplugged)")
        return np.full((48, 64, 3), self.n % 256, np.uint8)

    def close(self):
        pass


def opts(**kw):
    base = dict(instruction="pick the red block", camera="none", home=False, yes=True, label="success", max_steps=12)
    base.update(kw)
    return er.Options(**base)


def episode(policy, backend, o, cameras=None, clock=None):
    clock = clock or FakeClock()
    rec = {"images": {}, "qpos": [], "action": [], "instruction": o.instruction}
    ended = er.run_episode(policy, backend, cameras or {}, o, rec, clock, clock.sleep, log=lambda *a: None)
    return ended, rec


# ----------------------------------------------------------------------------- loop

def test_rate_held_by_the_clock_and_chunks_sent_as_one_motion():
    clock = FakeClock()
    policy, backend = FakePolicy(clock=clock, infer_s=0.03), FakeBackend(clock=clock)
    ended, rec = episode(policy, backend, opts(max_steps=12), clock=clock)
    assert ended == "max-steps" and len(rec["action"]) == 12
    assert np.allclose(np.diff(backend.reads[1:]), 0.1)   # 10 Hz, inference time absorbed by the deadline
    sends = [c for c in backend.calls if c[0] == "send"]
    assert len(sends) == 3 and all(len(s[1]) == 4 and s[2] == pytest.approx(0.1) for s in sends)
    assert backend.kinds()[-1] == "stop" and rec["overruns"] == 0


def test_out_of_range_targets_are_clamped_and_capped():
    arm = er.ARMS["fr3"]
    wild = np.append(np.array(arm.q_max) + 5.0, 1.0)
    backend = FakeBackend()
    backend.send_chunk = lambda t, dt: backend.calls.append(("send", np.array(t), dt))   # the arm stays put
    o = opts(max_steps=8, fps=20.0, max_joint_speed=0.5, joint_margin=0.05)
    episode(FakePolicy(lambda k, obs: np.tile(wild, (8, 1))), backend, o)
    cap = 0.5 / 20.0
    for _, targets, _ in [c for c in backend.calls if c[0] == "send"]:
        assert (targets <= np.array(arm.q_max) - 0.05 + 1e-9).all() and (targets >= np.array(arm.q_min) + 0.05 - 1e-9).all()
        steps = np.diff(np.vstack([er.READY, targets]), axis=0)
        assert np.abs(steps).max() <= cap + 1e-9                    # per step, from the measured joints
        assert np.abs(targets[-1] - er.READY).max() <= 4 * cap + 1e-9


def test_safe_targets_limits_win_over_the_cap():
    lo, hi = np.full(7, -1.0), np.full(7, 1.0)
    out = er.safe_targets(np.full((3, 7), 9.0), np.full(7, 1.2), lo, hi, 0.1)   # measured already outside
    assert (out == 1.0).all()
    with pytest.raises(er.RobotError, match="non-finite"):
        er.safe_targets(np.full((2, 7), np.nan), np.zeros(7), lo, hi, 0.1)


def test_chattering_gripper_toggles_once():
    # around 0.5 (hysteresis holds), then closed with open spikes for 0.8 s (< 1 s cooldown), then closed
    g = [0.55, 0.45] * 5 + [0.1, 0.9] * 4 + [0.1] * 10
    def chunk(k, obs):
        vals = g[k * 4:(k + 1) * 4] + [0.1] * 8
        return np.column_stack([np.tile(er.READY, (8, 1)), vals[:8]])
    backend = FakeBackend()
    ended, rec = episode(FakePolicy(chunk), backend, opts(max_steps=len(g)))
    assert [c for c in backend.calls if c[0] == "gripper"] == [("gripper", True)]
    recorded = np.array(rec["action"])[:, 7]
    assert set(recorded[:10]) == {1.0} and set(recorded[10:]) == {0.0}


def test_gripper_gate_cooldown_and_hysteresis():
    gate = er.GripperGate(closed=False, cooldown=1.0)
    assert gate.update(0.45, 0.0) is None and gate.update(0.2, 0.1) is True
    assert gate.update(0.9, 0.5) is None and gate.update(0.9, 1.2) is False


def test_exception_mid_chunk_stops_and_sends_nothing_after():
    backend = FakeBackend()
    camera = FakeCamera(fail_at=6)                       # second chunk (steps 4..7), its 2nd step
    with pytest.raises(er.RobotError, match="stalled"):
        episode(FakePolicy(), backend, opts(max_steps=12), cameras={"front": camera})
    assert backend.kinds() == ["send", "send", "stop"]


def test_nan_action_stops_before_sending():
    backend = FakeBackend()
    bad = lambda k, obs: np.full((8, 8), np.nan)
    with pytest.raises(er.RobotError, match="non-finite"):
        episode(FakePolicy(bad), backend, opts())
    assert backend.kinds() == ["stop"]


def test_ctrl_c_during_inference_is_deferred_then_stops_cleanly():
    def chunk(k, obs):
        if k == 1:
            os.kill(os.getpid(), signal.SIGINT)         # arrives while the policy "thinks"
        return np.tile(np.append(er.READY, 1.0), (8, 1))
    backend, before = FakeBackend(), signal.getsignal(signal.SIGINT)
    ended, rec = episode(FakePolicy(chunk), backend, opts(max_steps=12))
    assert ended == "ctrl-c" and len(rec["action"]) == 4
    assert backend.kinds() == ["send", "stop"]          # the chunk computed during Ctrl-C is never sent
    assert signal.getsignal(signal.SIGINT) is before    # handler restored


def test_keyboard_interrupt_anywhere_still_stops():
    backend = FakeBackend(fail_read_at=3)
    backend.fail_read_exc = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        episode(FakePolicy(), backend, opts())
    assert backend.kinds()[-1] == "stop" and backend.kinds().count("send") == 1


def test_dry_run_prints_targets_and_sends_nothing():
    inner, lines = FakeBackend(), []
    dry = hw.DryRunBackend(inner, log=lines.append)
    clock = FakeClock()
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    er.run_episode(FakePolicy(), dry, {}, opts(dry_run=True, home=True), rec, clock, clock.sleep, log=lines.append)
    assert inner.calls == [] and len(rec["action"]) == 12
    assert sum("[dry-run] 4 targets" in l for l in lines) == 3


def test_home_moves_to_ready_then_runs():
    backend = FakeBackend(q=np.zeros(7), width=0.0)
    ended, rec = episode(FakePolicy(), backend, opts(home=True, max_steps=4))
    assert backend.calls[0] == ("gripper", False) and np.allclose(backend.calls[1][1], er.READY[None])
    assert ended == "max-steps"


def test_waypoint_velocities_flow_through_and_never_overshoot():
    class F:                                             # stand-in for the franky module
        Duration = lambda ms: ms
        JointState = lambda q, v: (np.array(q), np.array(v))
        JointWaypoint = lambda state, minimum_time: (state, minimum_time)
        JointWaypointMotion = lambda wps: wps
    sent = {}
    b = object.__new__(hw.FrankyBackend)
    b.f, b.v_max, b.a_brake, b.goal = F, np.full(7, 0.15), np.full(7, 10.0), None
    b.lo, b.hi = np.full(7, -3.0), np.full(7, 3.0)
    b.robot = types.SimpleNamespace(move=lambda m, asynchronous: sent.update(m=m, asynchronous=asynchronous),
                                    state=types.SimpleNamespace(q_d=er.READY, dq_d=np.zeros(7)),
                                    poll_motion=lambda: sent.update(polled=True))
    chunk = er.READY + np.outer([0.01, 0.03, 0.05, 0.05, 0.04], np.ones(7))
    b.send_chunk(chunk, 0.1)
    v = np.array([state[1] for state, _ in sent["m"]])[:, 0]
    assert sent["asynchronous"] and all(ms == 100 for _, ms in sent["m"])
    assert np.allclose(v, [0.15, 0.15, 0.0, 0.0, 0.0])   # clipped; 0 at a hold, a reversal and the end
    sent.clear()
    b.send_chunk(np.tile(chunk[-1], (4, 1)), 0.1)        # holds where the running motion ends: not re-planned
    assert sent == {"polled": True}
    b.send_chunk(np.tile(chunk[-2], (4, 1)), 0.1)
    assert "m" in sent


def test_waypoints_never_lead_past_a_limit():
    """franky's planner meets each waypoint's position and velocity exactly, so every velocity must be reachable
    from the waypoint before and brakeable to the next one's: a waypoint at a clamped target carries none, the
    arm's own motion counts for the first one, and the last is at rest."""
    lo, hi, dt, a, v_max = np.full(7, -1.0), np.full(7, 1.0), 0.05, np.full(7, 1.5), np.full(7, 0.5)
    zero = np.zeros(7)
    up = np.r_[np.linspace(0.9, 1.0, 5), 1.0, 1.0][:, None] * np.ones(7)   # approaching hi, then held there
    q0 = np.full(7, 0.875)
    v = hw.waypoint_velocities(up, q0, zero, dt, v_max, a, lo, hi)
    assert (v[4:] == 0).all() and (v[:4] > 0).all()     # at the bound: nothing toward it
    d = np.diff(np.vstack([q0, up]), axis=0)
    speed = np.vstack([zero, np.abs(v)])
    assert (speed[1:] ** 2 <= speed[:-1] ** 2 + 2 * a * np.abs(d) + 1e-12).all()          # reachable
    assert (speed[1:-1] ** 2 <= speed[2:] ** 2 + 2 * a * np.abs(d[1:]) + 1e-12).all()     # brakeable
    assert (v ** 2 <= 2 * a * (hi - up) + 1e-12).all()                                     # stops before hi
    # the arm coming from above a target that turns back up would have to swing below it and back: 0
    v = hw.waypoint_velocities(np.array([[0.0] * 7, [0.1] * 7]), np.full(7, 0.2), zero, dt, v_max, a, lo, hi)
    assert (v == 0).all()
    # already moving along the path at 0.4 rad/s: the first waypoint keeps that speed (central difference capped)
    path = np.linspace(0.02, 0.2, 10)[:, None] * np.ones(7)
    v = hw.waypoint_velocities(path, zero, np.full(7, 0.4), dt, v_max, a, lo, hi)
    assert v[0, 0] == pytest.approx(0.4) and v[-1, 0] == 0 and (np.diff(v[-4:, 0]) < 0).all()


def test_step_query_uses_select_action():
    backend = FakeBackend()
    policy = FakePolicy(lambda k, obs: np.tile(np.append(er.READY + 0.01 * (k + 1), 1.0), (FakePolicy.horizon, 1)))
    _, rec = episode(policy, backend, opts(query="step", max_steps=5))
    assert backend.kinds().count("send") == 5
    # every observation carries the qpos of the control step before (train.py --velocity); the first, its own
    assert np.array_equal(policy.obs[0]["prev_qpos"], policy.obs[0]["qpos"])
    for k in range(1, 5):
        assert np.array_equal(policy.obs[k]["prev_qpos"], rec["qpos"][k - 1])
        assert not np.array_equal(policy.obs[k]["qpos"], rec["qpos"][k - 1])


# ----------------------------------------------------------------------------- recording and trials

def test_run_records_episode_video_and_trials(tmp_path):
    clock = FakeClock()
    o = opts(out=str(tmp_path), episodes=2, camera="opencv:0", ckpt="ck.pt")
    res = er.run(o, policy=FakePolicy(), backend=FakeBackend(), cameras={"front": FakeCamera()},
                 clock=clock, sleep=clock.sleep, ask=lambda p: "", log=lambda *a: None)
    assert [r["label"] for r in res] == ["success", "success"]
    ep = data.load_episode(tmp_path / "episode_000001.npz")
    assert ep["images"]["front"].shape == (12, 24, 32, 3) and ep["qpos"].shape == (12, 8) and ep["action"].shape == (12, 8)
    assert ep["instruction"] == "pick the red block"
    meta = data.load_meta(tmp_path)
    assert meta["cameras"] == ["front"] and meta["gripper_indices"] == [7] and meta["fps"] == 10.0
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [r["trials_so_far"] for r in rows] == ["1", "2"] and rows[-1]["rate"] == "1.000"
    remote = opts(out=str(tmp_path), episodes=1, camera="opencv:0", remote="ws://gpu-box:8000")  # a served policy
    er.run(remote, policy=FakePolicy(), backend=FakeBackend(), cameras={"front": FakeCamera()}, clock=clock,
           sleep=clock.sleep, ask=lambda p: "", log=lambda *a: None)
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert rows[-1]["ckpt"] == "ws://gpu-box:8000" and rows[-1]["trials_so_far"] == "1"  # counted apart from ck.pt
    pytest.importorskip("imageio_ffmpeg")
    assert (tmp_path / "episode_000000.mp4").stat().st_size > 0


def test_error_rollout_is_saved_labelled_error_and_reraised(tmp_path):
    asked = []
    with pytest.raises(er.RobotError):
        er.run(opts(out=str(tmp_path), label=""), policy=FakePolicy(), backend=FakeBackend(),
               cameras={"front": FakeCamera(fail_at=3)}, clock=FakeClock(), sleep=lambda s: None,
               ask=asked.append, log=lambda *a: None)
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert rows[0]["label"] == "error" and rows[0]["trials_so_far"] == "0" and asked == []
    assert data.load_episode(tmp_path / "episode_000000.npz")["action"].shape == (2, 8)


def test_dry_run_session_is_kept_apart_and_not_asked(tmp_path):
    clock, asked = FakeClock(), []
    inner = FakeBackend()
    res = er.run(opts(out=str(tmp_path), label="", dry_run=True, yes=False), policy=FakePolicy(), backend=inner,
                 clock=clock, sleep=clock.sleep, ask=asked.append, log=lambda *a: None)
    assert res[0]["label"] == "dry-run" and asked == [] and [c[0] for c in inner.calls] == ["close"]
    rows = list(csv.DictReader((tmp_path / "dry-run" / "trials.csv").open()))
    assert rows[0]["label"] == "dry-run" and rows[0]["trials_so_far"] == "0"
    assert not (tmp_path / "trials.csv").exists()


def test_label_asked_and_camera_none_records_no_images(tmp_path):
    answers = iter(["maybe", "n"])
    clock = FakeClock()
    res = er.run(opts(out=str(tmp_path), label=""), policy=FakePolicy(), backend=FakeBackend(), clock=clock,
                 sleep=clock.sleep, ask=lambda p: next(answers), log=lambda *a: None)
    assert res[0]["label"] == "fail"
    assert data.load_episode(res[0]["episode"])["images"] == {}


def test_wilson():
    assert er.wilson(0, 0) == (0.0, 1.0)
    lo, hi = er.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert er.wilson(10, 10)[1] == 1.0 and er.wilson(0, 10)[0] == 0.0


def test_layout_refused():
    p = FakePolicy()
    p.action_names = p.action_names[:7]
    with pytest.raises(er.RobotError, match="Franka layout"):
        er.check_layout(p)


# ----------------------------------------------------------------------------- options and fast failures

def test_flags_from_the_dataclass():
    o = er.parse_options(["--dry-run", "--dynamics", "0.5", "--no-home", "--camera", "none", "--arm", "panda"])
    assert o.dry_run and o.dynamics == 0.5 and not o.home and o.arm == "panda"
    with pytest.raises(er.RobotError, match="dynamics"):
        er.check_options(er.Options(dynamics=1.5))
    assert er.parse_options(["--noise-scale", "0"]).noise_scale == 0.0
    with pytest.raises(er.RobotError, match="--noise-scale"):
        er.check_options(er.Options(noise_scale=1.5))


def test_done_predicate_ends_the_rollout_and_stops():
    clock, n = FakeClock(), {"k": 0}

    def done():
        n["k"] += 1
        return n["k"] > 5                                # e.g. the twin's success predicate
    policy, backend = FakePolicy(clock=clock), FakeBackend(clock=clock)
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    ended = er.run_episode(policy, backend, {}, opts(max_steps=12), rec, clock, clock.sleep, log=lambda *a: None, done=done)
    assert ended == "done" and len(rec["action"]) == 5 and backend.kinds()[-1] == "stop"


def test_mujoco_robot_and_record_refuse_a_task_the_twin_lacks(capsys):
    assert er.main(["--robot", "mujoco", "--task", "lift_block", "--ckpt", "nope.pt"]) == 2
    assert "twin task" in capsys.readouterr().err
    assert record.main(["--robot", "mujoco", "--task", "real", "--out", "unused"]) == 2
    assert "franka_pick_place" in capsys.readouterr().err
    assert record.main(["--robot", "franky", "--task", "t", "--out", "unused"]) == 2
    assert "--ip is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):                     # no `eval_real.py record` subcommand: record.py is the tool
        er.main(["record", "--robot", "mujoco"])


def test_nothing_listening_fails_fast(capsys):
    t = time.monotonic()
    with pytest.raises(er.RobotError, match="refused"):
        hw.check_reachable("127.77.66.55")             # loopback address with no server behind it
    pytest.importorskip("franky")
    with pytest.raises(er.RobotError, match="refused"):
        hw.FrankyBackend("127.77.66.55")                # loopback, no server
    code = er.main(["--ip", "127.77.66.55", "--instruction", "x", "--ckpt", "nope.pt"])
    assert code == 2 and "127.77.66.55:1337" in capsys.readouterr().err
    assert time.monotonic() - t < 3


def test_unroutable_address_fails_within_the_probe_timeout():
    t = time.monotonic()
    with pytest.raises(er.RobotError, match="192.0.2.1"):
        hw.check_reachable("192.0.2.1", timeout=1.0)   # TEST-NET-1: timeout or 'unreachable', never a hang
    assert time.monotonic() - t < 3


def test_franky_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "franky", None)
    t = time.monotonic()
    with pytest.raises(er.RobotError, match="pip install -r robot/requirements.txt"):
        hw.FrankyBackend("127.0.0.1")
    assert time.monotonic() - t < 1


def test_camera_library_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(er.RobotError, match="pip install pyrealsense2"):
        hw.open_cameras("realsense", ["front"], 1.0)
    with pytest.raises(er.RobotError, match="pip install opencv-python-headless"):
        hw.open_cameras("opencv:0", ["front"], 1.0)
    with pytest.raises(er.RobotError, match="checkpoint uses 2"):
        hw.open_cameras("opencv:0", ["front", "wrist"], 1.0)


def test_stalled_camera_is_an_error_within_its_timeout():
    release = threading.Event()
    frames = iter(range(2))
    def grab():                                          # two frames, then hangs like a stalled driver
        try:
            return np.full((4, 4, 3), next(frames), np.uint8)
        except StopIteration:
            release.wait(5)
            raise RuntimeError("released")
    cam = hw.Camera("front", grab, timeout=0.3)
    cam.read()
    t = time.monotonic()
    with pytest.raises(er.RobotError, match="stalled"):
        while time.monotonic() - t < 2:
            cam.read()
            time.sleep(0.02)
    assert time.monotonic() - t < 1
    release.set()
    cam.close()
    hang = threading.Event()
    with pytest.raises(er.RobotError, match="no frame within"):
        hw.Camera("dead", lambda: hang.wait(5), timeout=0.2)
    hang.set()


# ----------------------------------------------------------------------------- a fake franky, as slow as a real hand

class FrankyError(Exception):
    pass


class SlowHand:
    """franky's Gripper as slow as a real Franka Hand: reading `width` takes 100 ms, a command blocks for 1.3 s,
    and an *_async call first waits for the previous command (as franky's do). Time spent on the control
    (main) thread is charged to the injected clock; on any other thread it passes for real, 100x shorter."""
    READ_S, COMMAND_S = 0.1, 1.3

    def __init__(self, clock, width=0.08):
        self.clock, self._width, self.commands, self.main_thread_s = clock, width, [], 0.0
        self.lock = threading.Lock()

    def spend(self, s):
        if threading.current_thread() is threading.main_thread():
            self.main_thread_s += s
            self.clock.t += s
        else:
            time.sleep(s / 100)

    @property
    def width(self):
        self.spend(self.READ_S)
        return self._width

    def _command(self, name, width):
        with self.lock:
            self.spend(self.COMMAND_S)
            self._width = width
            self.commands.append(name)
        return True

    def grasp(self, width, speed, force, epsilon_inner=0.005, epsilon_outer=0.005):
        return self._command("grasp", 0.0)

    def open(self, speed):
        return self._command("open", 0.08)

    def grasp_async(self, *a, **kw):
        return self.grasp(*a, **kw)                      # the caller waits as long as the command takes

    def open_async(self, speed):
        return self.open(speed)


class Limit:
    def __init__(self, value):
        self.value = np.array(value, float)

    def get(self):
        return self.value.copy()

    def set(self, value):
        assert (np.asarray(value) <= self.value + 1e-9).all(), "franky refuses limits above its own"
        self.value = np.array(value, float)


RobotMode = enum.Enum("RobotMode", "Other Idle Move Guiding Reflex UserStopped AutomaticErrorRecovery")  # franky's
NOT_POSSIBLE = "libfranka: {} command rejected: command not possible in the current mode ({})!"   # libfranka 0.21.2


class FakeRobot:
    """franky's Robot: the arm reaches a motion's last waypoint at once. `stop()` leaves 'Move command preempted'
    pending for the next move / join_motion, as franky 2.0.0 does (checked in franky-sim); `stuck_stop` makes
    the JointStopMotion time out (so the backend falls back to the hard stop); `reflex` fails every motion and
    puts the robot in Reflex mode. In Reflex or UserStopped mode libfranka rejects a move and a stop. `mode`,
    `command_rate` (control_command_success_rate) and `on_poll(robot)` (called at each poll and state read)
    let a test script the robot."""

    def __init__(self, ip, realtime_config=None):
        self.q, self.has_errors, self.recover_ok, self.recovered = er.READY.copy(), False, True, 0
        self.pending, self.moves, self.stuck_stop, self.reflex, self.running = None, [], False, None, False
        self.planner_fail_at, self.mode, self.command_rate, self.on_poll = None, RobotMode.Idle, 1.0, None
        panda = er.ARMS["panda"]                         # franky 2.0.0's defaults on any robot
        self.joint_velocity_limit, self.joint_acceleration_limit = Limit(panda.dq_max), Limit(panda.ddq_max)
        self.joint_jerk_limit, self.relative_dynamics_factor = Limit(panda.dddq_max), 1.0

    @property
    def current_joint_state(self):
        return types.SimpleNamespace(position=self.q.copy())

    @property
    def state(self):
        if self.on_poll:
            self.on_poll(self)
        return types.SimpleNamespace(q_d=self.q.copy(), dq_d=np.zeros(7), robot_mode=self.mode,
                                     control_command_success_rate=self.command_rate)

    def _raise_pending(self):
        if self.pending is not None:
            e, self.pending = self.pending, None
            raise e

    def move(self, motion, asynchronous=False):
        self._raise_pending()
        if self.mode.name in ("Reflex", "UserStopped"):
            self.pending = FrankyError(NOT_POSSIBLE.format("Move", self.mode.name))
            return
        self.moves.append(motion)
        if self.planner_fail_at is not None and len(self.moves) == self.planner_fail_at:
            self.pending = RuntimeError("Motion planner failed with error code -111")   # franky: not franky.Exception
            return
        self.running = motion == "stop" and self.stuck_stop
        if self.reflex:
            self.pending, self.running, self.mode = FrankyError(self.reflex), False, RobotMode.Reflex
            self.has_errors = True
        elif motion != "stop":
            self.q = np.array(motion[-1][0][0], float)   # [(JointState(q, v), ms), ...]

    def join_motion(self, timeout=None):
        if self.running:
            return False
        self._raise_pending()
        return True

    def poll_motion(self):
        if self.on_poll:
            self.on_poll(self)
        return self.join_motion(0)

    def stop(self):
        if self.mode.name in ("Reflex", "UserStopped"):
            raise FrankyError(NOT_POSSIBLE.format("Stop Move", self.mode.name))
        self.running, self.pending = False, FrankyError("libfranka: Move command preempted!")

    def recover_from_errors(self):
        self.recovered += 1
        self.has_errors = not self.recover_ok
        if self.recover_ok and self.mode == RobotMode.Reflex:
            self.mode = RobotMode.Idle
        return self.recover_ok

    def set_collision_behavior(self, torque, force):
        self.collision = (list(torque), list(force))

    def set_guiding_mode(self, mode, elbow):
        self.guiding = (list(mode), elbow)


def fake_franky(monkeypatch, clock, **robot_kw):
    """A franky module whose Robot / Gripper are the fakes above (the last made are f.robot / f.hand)."""
    f = types.SimpleNamespace(Exception=FrankyError, RealtimeException=type("RT", (FrankyError,), {}),
                              IncompatibleVersionException=type("IV", (FrankyError,), {}),
                              RealtimeConfig=types.SimpleNamespace(Ignore=0, Enforce=1),
                              Duration=lambda ms: ms, JointState=lambda q, v: (np.array(q), np.array(v)),
                              JointWaypoint=lambda state, minimum_time: (state, minimum_time),
                              JointWaypointMotion=lambda wps: wps, JointStopMotion=lambda: "stop")

    def robot(ip, realtime_config=None):
        f.robot = FakeRobot(ip, realtime_config)
        for k, v in robot_kw.items():
            setattr(f.robot, k, v)
        return f.robot

    def gripper(ip):
        f.hand = SlowHand(clock)
        return f.hand
    f.Robot, f.Gripper = robot, gripper
    monkeypatch.setattr(hw, "require", lambda *a: f)
    monkeypatch.setattr(hw, "check_reachable", lambda ip: None)
    return f


def gripper_policy(period=0.5):
    """20 Hz policy: holds the ready pose, its gripper command flips every `period` s (more often than a stroke)."""
    p = FakePolicy(lambda k, obs: np.column_stack([np.tile(er.READY, (8, 1)),
                                                  [float((k * 4 + i) / 20 // period % 2) for i in range(8)]]))
    p.fps = 20.0
    return p


def test_slow_gripper_never_stalls_the_loop(monkeypatch):
    """The hand of a real Franka (width read 100 ms, commands 1.3 s) costs the control loop nothing: 200 steps
    at 20 Hz on the injected clock, and the commands still reach the hand, the newest last."""
    clock = FakeClock()
    f = fake_franky(monkeypatch, clock)
    backend = hw.FrankyBackend("fake", log=lambda *a: None)
    f.hand.main_thread_s = 0.0                           # connecting read the width once; the loop must not
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    ended = er.run_episode(gripper_policy(), backend, {}, opts(max_steps=200, fps=20.0), rec, clock, clock.sleep,
                           log=lambda *a: None)
    assert ended == "max-steps" and len(rec["action"]) == 200
    assert abs(rec["rate_hz"] - 20.0) <= 0.05 * 20.0 and rec["overruns"] == 0
    assert f.hand.main_thread_s == 0.0
    sent = np.array(rec["action"])[:, 7]
    flips = np.flatnonzero(np.diff(sent))
    assert len(flips) >= 3 and np.diff(flips).min() >= 1.6 * 20   # the gate waits for a full stroke (1.6 s)
    assert backend.hand.wait_idle(5.0)
    assert f.hand.commands[-1] == ("grasp" if sent[-1] == 0 else "open")
    backend.close()


def test_loop_measures_and_reports_the_rate_it_falls_to(tmp_path):
    clock, lines = FakeClock(), []
    policy = FakePolicy(clock=clock, infer_s=0.5)        # a chunk (4 steps at 10 Hz) takes 0.5 + 3 x 0.1 s: the
    #                                                      late step re-anchors the schedule, the next starts at once
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    er.run_episode(policy, FakeBackend(clock=clock), {}, opts(max_steps=40), rec, clock, clock.sleep, log=lines.append)
    assert rec["rate_hz"] == pytest.approx(39 / (9 * 0.8 + 0.7)) and rec["overruns"] == 10
    assert sum("behind the 10 Hz schedule" in l for l in lines) == 1     # said once, at the first late step
    clock, lines = FakeClock(), []
    res = er.run(opts(max_steps=40, out=str(tmp_path)), policy=FakePolicy(clock=clock, infer_s=0.5),
                 backend=FakeBackend(clock=clock), clock=clock, sleep=clock.sleep, ask=lambda p: "", log=lines.append)
    assert res[0]["rate_hz"] < 9 and any("WARNING: the loop held" in l for l in lines)


def test_record_guiding_holds_20hz_with_a_slow_hand(monkeypatch, tmp_path):
    """record.py in guiding mode with an injected robot (franky-sim blocks in set_guiding_mode): 200 steps at
    20 Hz on the injected clock although the hand is as slow as a real one; meta.json's fps and measured_fps
    agree; SPACE toggles the gripper through the worker."""
    clock = FakeClock()
    f = fake_franky(monkeypatch, clock, has_errors=True)
    presses = [(clock.t, " "), (clock.t + 2.0, " "), (clock.t + 5.0, " ")]   # start; close at 2 s; open at 5 s

    def keys():
        out = ""
        while presses and presses[0][0] <= clock.t:
            out += presses.pop(0)[1]
        return out
    a = record.build_parser().parse_args(["--robot", "franky", "--ip", "fake", "--task", "pick", "--instruction", "x",
                                          "--out", str(tmp_path), "--max-steps", "200", "--yes", "--camera-names",
                                          "front", "--image-size", "24", "32"])
    saved = record.record_franky(a, log=lambda *a: None, keys=keys, cameras={"front": FakeCamera()}, clock=clock,
                                 sleep=clock.sleep)
    assert f.robot.guiding == ([True] * 6, True) and f.robot.recovered == 1
    ep = data.load_episode(saved[0])
    assert ep["action"].shape == (200, 8) and ep["images"]["front"].shape == (200, 24, 32, 3)
    flips = np.flatnonzero(np.diff(ep["action"][:, 7]))
    assert len(flips) == 2 and flips[1] - flips[0] == 60 and ep["action"][flips[0] + 1, 7] == 0   # closed 3 s
    meta = data.load_meta(tmp_path)
    assert meta["fps"] == 20.0 and abs(meta["measured_fps"] - 20.0) <= 0.05 * 20.0
    assert f.hand.main_thread_s == pytest.approx(SlowHand.READ_S)   # the one read at connect, none while recording
    assert f.hand.commands[-1] == "open"                 # guide.close() let the last command finish


def test_recording_off_its_rate_is_not_saved(tmp_path):
    lines = []
    ep = {"rate_hz": 17.0, "overruns": 30, "max_step_s": 0.05}
    assert not record.timing_held(ep, 20.0, lines.append) and "not saved" in lines[0]
    assert record.timing_held({"rate_hz": 19.5, "overruns": 1, "max_step_s": 0.07}, 20.0, lines.append)


def test_a_rollout_after_a_hard_stop_starts_cleanly(monkeypatch, tmp_path):
    """The first rollout's JointStopMotion times out, so the backend hard-stops; franky then keeps 'Move command
    preempted' for the next move. The backend clears it, and the second rollout homes and runs."""
    clock, lines = FakeClock(), []
    f = fake_franky(monkeypatch, clock, stuck_stop=True)
    o = opts(out=str(tmp_path), episodes=2, home=True, max_steps=8, ip="fake")
    res = er.run(o, policy=FakePolicy(), clock=clock, sleep=clock.sleep, ask=lambda p: "", log=lines.append)
    assert [r["ended"] for r in res] == ["max-steps", "max-steps"] and [r["steps"] for r in res] == [8, 8]
    assert any("hard stop" in l for l in lines) and any("preempted" in l and "cleared" in l for l in lines)
    assert f.robot.pending is None


def test_homing_that_fails_says_why_at_once(monkeypatch, tmp_path):
    clock = FakeClock()
    fake_franky(monkeypatch, clock, q=np.zeros(7), reflex="libfranka: Move command aborted: motion aborted by reflex!")
    t0 = clock.t
    res = er.run(opts(out=str(tmp_path), home=True, ip="fake", label=""), policy=FakePolicy(), clock=clock,
                 sleep=clock.sleep, ask=lambda p: "", log=lambda *a: None)
    assert res[0]["label"] == "error" and "reflex" in res[0]["error"]   # said why; the session ended cleanly
    assert clock.t - t0 < 1.0                            # not the 30 s timeout
    backend = FakeBackend(q=np.zeros(7))                 # a motion that ends short of the ready pose
    backend.send_chunk = lambda t, dt: None
    backend.motion_finished = lambda: True
    clock = FakeClock()
    with pytest.raises(er.RobotError, match="ended with joint 4"):
        er.go_home(backend, clock, clock.sleep)
    assert clock.t - 100.0 < 2.0


def test_failed_recovery_stops_with_what_to_do(monkeypatch):
    fake_franky(monkeypatch, FakeClock(), has_errors=True, recover_ok=False)
    with pytest.raises(er.RobotError, match="automatic recovery failed"):
        hw.FrankyBackend("fake", log=lambda *a: None)


def test_fr3_plans_with_fr3_limits(monkeypatch):
    """franky 2.0.0 plans with the Panda's accelerations and jerks: --arm fr3 lowers them to the FR3's at connect
    (franky accepts only values below its own), and the waypoint speed cap follows franky's velocity limit."""
    f = fake_franky(monkeypatch, FakeClock())
    b = hw.FrankyBackend("fake", arm="fr3", dynamics=0.5, log=lambda *a: None)
    assert np.allclose(f.robot.joint_acceleration_limit.get(), [10, 7.5, 10, 10, 10, 10, 10])
    assert np.allclose(f.robot.joint_jerk_limit.get(), [5000, 3750, 5000, 5000, 5000, 5000, 5000])
    assert np.allclose(f.robot.joint_velocity_limit.get(), er.ARMS["panda"].dq_max)   # already below the FR3's
    assert np.allclose(b.v_max, 0.8 * 0.5 * np.array(er.ARMS["panda"].dq_max))
    assert np.allclose(b.a_brake, 0.5 * 0.5 * np.array([10, 7.5, 10, 10, 10, 10, 10]))
    b.close()
    hw.FrankyBackend("fake", arm="panda", log=lambda *a: None)
    assert np.allclose(f.robot.joint_acceleration_limit.get(), er.ARMS["panda"].ddq_max)


# ----------------------------------------------------------------------------- the workspace guard

class TablePolicy(FakePolicy):
    """Drives the fingertips straight into the table: the TCP from the ready pose down to (0.45, 0, -0.05) m in
    `n` targets (hand pointing down, gripper open); chunk k starts at target k * n_action_steps."""

    def __init__(self, n=40, **kw):
        p0, path, q = franka.guard_points(er.READY)["tcp"], [], er.READY
        for s in np.linspace(0, 1, n + 1)[1:]:
            q = down_pose(p0[0] + s * (0.45 - p0[0]), p0[2] + s * (-0.05 - p0[2]), q)
            path.append(q)
        self.path = np.array(path)
        super().__init__(lambda k, obs: np.column_stack([
            self.path[np.minimum(k * self.n_action_steps + np.arange(self.horizon), n - 1)], np.ones(self.horizon)]), **kw)


def test_policy_driven_into_the_table_stops_at_the_margin():
    """Every target the loop sends keeps the end effector in the box; the chunk that would cross the table's
    margin is cut where its path reaches the box, the arm stops there, and the rollout ends with 'workspace'."""
    lines = []
    backend = FakeBackend()
    o = opts(table_margin=0.03, max_steps=100)
    rec = {"images": {}, "qpos": [], "action": [], "instruction": o.instruction}
    clock = FakeClock()
    ended = er.run_episode(TablePolicy(), backend, {}, o, rec, clock, clock.sleep, log=lines.append)
    ws = er.workspace(o)
    sent = [c[1] for c in backend.calls if c[0] == "send"]
    assert ended == "workspace" and backend.kinds()[-1] == "stop"
    assert all(ws.first_outside(t) == len(t) for t in sent)
    z = lowest_fingertip(backend.q)
    assert 0.03 <= z < 0.03 + 1e-3, z                    # the path stopped at the box's face
    assert any("workspace guard" in l and "outside the box" in l for l in lines)
    assert len(rec["action"]) < 100


def test_measured_pose_outside_the_box_stops_at_once():
    backend = FakeBackend(q=TablePolicy().path[-1])      # the fingertips below the table top
    lines = []
    clock = FakeClock()
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    ended = er.run_episode(FakePolicy(), backend, {}, opts(), rec, clock, clock.sleep, log=lines.append)
    assert ended == "workspace" and backend.kinds() == ["stop"] and rec["action"] == []
    assert any("measured finger" in l for l in lines)


def test_twin_stops_a_policy_driven_into_the_table_at_the_margin():
    """The twin (MuJoCo) runs the same guard: its own pads, read from the simulation, stop at the margin."""
    from world import twin
    o = opts(table_margin=0.03, max_steps=100, fps=20.0, n_action_steps=4, home=True)
    backend = twin.TwinBackend("franka_pick_place", ["front"], (24, 32), o.dynamics, o.arm, workspace=er.workspace(o))
    backend.reset(twin.eval_seeds(0, 1)[0])
    cams = {"front": twin.TwinCamera(backend.env, "front")}
    policy = TablePolicy()
    policy.fps = 20.0
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    ended = er.run_episode(policy, backend, cams, o, rec, backend.clock, backend.sleep, log=print, record_images=False)
    backend.sleep(1.0)                                   # a second after the stop: the arm holds still
    env = backend.env
    pads = [env.data.geom_xpos[g][2] - 0.018 for g in env.pad_geoms["arm"]]   # the pads' lowest faces (hand down)
    q = env.qpos()[:7]
    print(f"twin: stopped with the pads' lowest face at z = {min(pads):.4f} m (fingertip FK {lowest_fingertip(q):.4f} m),"
          f" margin 0.03 m, after {len(rec['action'])} steps")
    assert ended == "workspace"
    assert 0.03 - 0.005 <= min(pads) < 0.03 + 0.005


def test_collision_behaviour_is_set_and_logged(monkeypatch):
    """franky's default contact thresholds are never relied on: the options' are set at connect and logged."""
    f, lines = fake_franky(monkeypatch, FakeClock()), []
    o = opts(ip="fake", collision_torque=[15.0] * 7, collision_force=[12.0] * 6)
    b = er.make_backend(o, log=lines.append)
    assert f.robot.collision == ([15.0] * 7, [12.0] * 6)
    assert any("collision behaviour set" in l and "15.0" in l for l in lines)
    b.close()
    hw.FrankyBackend("fake", log=lines.append)
    assert f.robot.collision == [list(v) for v in hw.COLLISION_DEFAULT] or \
        f.robot.collision == tuple(list(v) for v in hw.COLLISION_DEFAULT)



# ----------------------------------------------------------------------------- a planner failure

def test_planner_failure_is_survived_after_the_operator_confirms(monkeypatch, tmp_path):
    """franky raises a plain RuntimeError for a planner failure (not franky.Exception): the rollout stops, is
    saved as 'error', and the next one runs once the operator has confirmed, even with --label and --yes."""
    clock, prompts, lines = FakeClock(), [], []
    f = fake_franky(monkeypatch, clock, planner_fail_at=3)    # homing, chunk 1, chunk 2 fails (seen at chunk 3)
    o = opts(out=str(tmp_path), episodes=2, home=True, max_steps=16, ip="fake")
    moving = FakePolicy(lambda k, obs: np.column_stack([np.tile(er.READY + 0.01 * (k + 1), (8, 1)), np.ones(8)]))
    res = er.run(o, policy=moving, clock=clock, sleep=clock.sleep, ask=lambda p: prompts.append(p) or "",
                 log=lines.append)
    assert [r["label"] for r in res] == ["error", "success"] and res[1]["ended"] == "max-steps"
    assert "Motion planner failed" in res[0]["error"] and 0 < res[0]["steps"] < 16
    assert len(prompts) == 1 and "After the error" in prompts[0]
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [(r["label"], r["trials_so_far"]) for r in rows] == [("error", "0"), ("success", "1")]
    assert f.robot.pending is None and any("ended with an error" in l for l in lines)


# ----------------------------------------------------------------------------- fresh frames only

def test_camera_that_stalls_stops_the_rollout_within_three_periods(tmp_path):
    """A camera at 100 fps that stalls 0.3 s in (its driver call hangs): the rollout, on the real clock at 20 Hz,
    stops with a message within --max-frame-age (0.1 s) of the stall, not the 1.5 s of the first-frame timeout;
    each step's time and each frame's age are saved beside the episode."""
    hang, t0 = threading.Event(), time.monotonic()

    def grab():
        if time.monotonic() - t0 > 0.3:
            hang.wait(5)                                 # stalled
            raise RuntimeError("released")
        time.sleep(0.01)
        return np.full((48, 64, 3), 7, np.uint8)
    cam = hw.Camera("front", grab, timeout=1.5, max_age=0.1)
    o, backend, stopped = opts(out=str(tmp_path), max_steps=40, fps=20.0), FakeBackend(), []
    backend.stop = lambda: stopped.append(time.monotonic())
    with pytest.raises(er.RobotError, match="no new frame for 0.1"):
        er.run(o, policy=FakePolicy(), backend=backend, cameras={"front": cam}, log=lambda *a: None)
    stalled_for = stopped[0] - t0 - 0.3                  # the arm stopped this long after the stall
    hang.set()
    print(f"camera stalled: the arm was stopped {stalled_for:.3f} s after the stall")
    assert stalled_for < 0.3                             # stopped within a few periods of the stall
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [r["label"] for r in rows] == ["error"]
    import json
    timing = json.loads((tmp_path / "episode_000000.timing.json").read_text())
    n = int(rows[0]["steps"])
    assert len(timing["step_t"]) == n and len(timing["frame_age"]["front"]) == n   # the failed read: not a step
    assert max(timing["frame_age"]["front"]) <= 0.1 and timing["step_t"][-1] < 0.3 + 0.3


# ----------------------------------------------------------------------------- whole-chunk finiteness

@pytest.mark.parametrize("row, col, value", [(1, 7, np.nan), (1, 7, -np.inf), (6, 2, np.nan), (7, 7, np.inf)])
def test_non_finite_anywhere_in_the_chunk_is_refused(row, col, value):
    """A NaN gripper action used to be ignored and -inf closed the hand; rows past n_action_steps were never
    checked. Now the whole chunk, gripper included, is refused before anything is sent, and the arm stops."""
    def fn(k, obs):
        c = np.tile(np.append(er.READY, 1.0), (8, 1))
        if k == 1:
            c[row, col] = value
        return c
    backend = FakeBackend()
    with pytest.raises(er.RobotError, match="non-finite"):
        episode(FakePolicy(fn), backend, opts())
    assert backend.kinds() == ["send", "stop"]           # the first chunk only; no gripper command ever


def test_dry_run_prints_raw_and_capped_targets_with_their_largest_difference():
    """The capped targets always stay near the measured joints; the raw ones show what the policy asked for."""
    far = lambda k, obs: np.tile(np.append(er.READY + [0, 0, 0, 0, 0.9, 0, 0], 1.0), (8, 1))
    lines, backend = [], FakeBackend()
    clock = FakeClock()
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    er.run_episode(FakePolicy(far), er.DryRunBackend(backend, lines.append), {}, opts(dry_run=True, max_steps=4),
                   rec, clock, clock.sleep, log=lines.append)
    raw = [l for l in lines if "raw first" in l]
    assert len(raw) == 1 and "largest difference 0.850 rad (joint 5, target 1/4)" in raw[0], raw
