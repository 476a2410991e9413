"""eval_real.py's loop logic with fakes: injected clock (no timed tests), fake policy, backend and cameras.

Also the fast failures: nothing listening at the robot address, franky / camera libraries missing.
"""
import csv
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
    dry = er.DryRunBackend(inner, log=lines.append)
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
    b = object.__new__(er.FrankyBackend)
    b.f, b.v_max = F, np.full(7, 0.15)
    b.robot = types.SimpleNamespace(move=lambda m, asynchronous: sent.update(m=m, asynchronous=asynchronous))
    b.send_chunk(er.READY + np.outer([0.01, 0.03, 0.05, 0.05, 0.04], np.ones(7)), 0.1)
    v = np.array([state[1] for state, _ in sent["m"]])[:, 0]
    assert sent["asynchronous"] and all(ms == 100 for _, ms in sent["m"])
    assert np.allclose(v, [0.15, 0.15, 0.0, 0.0, 0.0])   # clipped; 0 at a hold, a reversal and the end


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
    o = er.Options(**vars(er.build_parser().parse_args(["--dry-run", "--dynamics", "0.5", "--no-home",
                                                        "--camera", "none", "--arm", "panda"])))
    assert o.dry_run and o.dynamics == 0.5 and not o.home and o.arm == "panda"
    with pytest.raises(er.RobotError, match="dynamics"):
        er.check_options(er.Options(dynamics=1.5))
    assert er.Options(**vars(er.build_parser().parse_args(["--noise-scale", "0"]))).noise_scale == 0.0
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
    assert er.main(["record", "--robot", "mujoco", "--task", "real", "--out", "unused"]) == 2
    assert "franka_pick_place" in capsys.readouterr().err
    assert er.main(["record", "--robot", "franky", "--task", "t", "--out", "unused"]) == 2
    assert "--ip is required" in capsys.readouterr().err


def test_nothing_listening_fails_fast(capsys):
    t = time.monotonic()
    with pytest.raises(er.RobotError, match="refused"):
        er.check_reachable("127.77.66.55")             # loopback address with no server behind it
    pytest.importorskip("franky")
    with pytest.raises(er.RobotError, match="refused"):
        er.FrankyBackend("127.77.66.55")                # loopback, no server
    code = er.main(["--ip", "127.77.66.55", "--instruction", "x", "--ckpt", "nope.pt"])
    assert code == 2 and "127.77.66.55:1337" in capsys.readouterr().err
    assert time.monotonic() - t < 3


def test_unroutable_address_fails_within_the_probe_timeout():
    t = time.monotonic()
    with pytest.raises(er.RobotError, match="192.0.2.1"):
        er.check_reachable("192.0.2.1", timeout=1.0)   # TEST-NET-1: timeout or 'unreachable', never a hang
    assert time.monotonic() - t < 3


def test_franky_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "franky", None)
    t = time.monotonic()
    with pytest.raises(er.RobotError, match="pip install -r requirements-robot.txt"):
        er.FrankyBackend("127.0.0.1")
    assert time.monotonic() - t < 1


def test_camera_library_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(er.RobotError, match="pip install pyrealsense2"):
        er.open_cameras("realsense", ["front"], 1.0)
    with pytest.raises(er.RobotError, match="pip install opencv-python-headless"):
        er.open_cameras("opencv:0", ["front"], 1.0)
    with pytest.raises(er.RobotError, match="checkpoint uses 2"):
        er.open_cameras("opencv:0", ["front", "wrist"], 1.0)


def test_stalled_camera_is_an_error_within_its_timeout():
    release = threading.Event()
    frames = iter(range(2))
    def grab():                                          # two frames, then hangs like a stalled driver
        try:
            return np.full((4, 4, 3), next(frames), np.uint8)
        except StopIteration:
            release.wait(5)
            raise RuntimeError("released")
    cam = er.Camera("front", grab, timeout=0.3)
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
        er.Camera("dead", lambda: hang.wait(5), timeout=0.2)
    hang.set()
