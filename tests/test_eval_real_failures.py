"""What eval_real.py and robot/record.py notice and refuse on a real Franka, with the fakes of test_eval_real.py
(a fake franky, a hand as slow as a real one, an injected clock): a failed motion, a reflex, the user stop and
a failed gripper command seen within a control step; control_command_success_rate logged per rollout; the
gripper reader surviving a failed read; recordings with a stall or a failed gripper command not saved.
"""
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
import eval_real as er  # noqa: E402
from robot import hardware as hw  # noqa: E402
from robot import record  # noqa: E402
from test_eval_real import (FakeCamera, FakeClock, FakePolicy, FrankyError, RobotMode, SlowHand,  # noqa: E402
                            fake_franky, opts)


# ----------------------------------------------------------------------------- failures noticed at once

REFLEX = "libfranka: Move command aborted: motion aborted by reflex! [\"cartesian_reflex\"]"


def closing_policy():
    """10 Hz, chunks of 8 (4 executed), each 0.01 rad further; chunk 1 (steps 4-7) closes the gripper from step 5."""
    return FakePolicy(lambda k, obs: np.column_stack([np.tile(er.READY + 0.01 * (k + 1), (8, 1)),
                                                      [1.0] * 8 if k == 0 else [1.0] + [0.0] * 7]))


def polled_by(f, hook) -> None:
    """Every fake Robot the session makes calls hook(robot) at each poll and state read."""
    make = f.Robot

    def robot(ip, realtime_config=None):
        r = make(ip, realtime_config)
        r.on_poll = hook
        return r
    f.Robot = robot

def test_a_failed_motion_ends_the_rollout_within_a_step_before_the_gripper_moves(monkeypatch):
    """A reflex aborts chunk 1's motion right after it is sent (step 4). The next step's poll sees it and ends the
    rollout there, before the gate closes the hand (step 5), not at the next chunk (step 8)."""
    clock, lines = FakeClock(), []
    f = fake_franky(monkeypatch, clock)
    backend = hw.FrankyBackend("fake", log=lines.append)

    def reflex_after_chunk_1(robot):
        if len(robot.moves) == 2 and robot.mode == RobotMode.Idle:
            robot.pending, robot.mode, robot.has_errors = FrankyError(REFLEX), RobotMode.Reflex, True
    f.robot.on_poll = reflex_after_chunk_1
    gripper = []
    backend.set_gripper = gripper.append
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    with pytest.raises(hw.MotionError, match="reflex"):
        er.run_episode(closing_policy(), backend, {}, opts(max_steps=12), rec, clock, clock.sleep, log=lines.append)
    assert len(rec["action"]) == 5 and gripper == []    # steps 0-4 ran; step 5 never reached the gate
    assert len(f.robot.moves) == 2                      # nothing sent after the failure
    backend.close()


def test_reflex_stop_says_the_arm_is_already_stopped(monkeypatch):
    """In Reflex mode libfranka rejects a stop motion and franky's stop() alike; the arm is held by the robot, so
    the backend says that instead of 'could not stop the robot'."""
    f, lines = fake_franky(monkeypatch, FakeClock()), []
    backend = hw.FrankyBackend("fake", log=lines.append)
    f.robot.mode = RobotMode.Reflex
    backend.stop()
    assert any("already stopped by a contact reflex" in l for l in lines), lines
    assert not any("could not stop" in l or "hard stop" in l for l in lines), lines
    f.robot.mode = RobotMode.UserStopped
    backend.stop()
    assert "already stopped by the user stop" in lines[-1]
    backend.close()


def test_user_stop_pressed_and_released_while_idle_needs_the_operator(monkeypatch, tmp_path):
    """The user stop pressed and released while the arm stands still raises no motion error; the robot mode shows
    it. The rollout ends 'error' at the step that sees it, and the arm moves again only after the operator has
    answered the prompt, even with --yes and --label."""
    clock, prompts, seen = FakeClock(), [], {}
    f = fake_franky(monkeypatch, clock)

    def user_stop(robot):                                # pressed 0.55 s into the rollout, released 0.1 s later
        t0 = seen.setdefault("t0", clock.t)
        robot.mode = RobotMode.UserStopped if t0 + 0.55 <= clock.t < t0 + 0.65 else RobotMode.Idle
        if robot.mode == RobotMode.UserStopped:
            seen.setdefault("moves", len(robot.moves))
    polled_by(f, user_stop)
    o = opts(out=str(tmp_path), episodes=2, max_steps=12, ip="fake")
    moving = FakePolicy(lambda k, obs: np.column_stack([np.tile(er.READY + 0.01 * (k + 1), (8, 1)), np.ones(8)]))
    res = er.run(o, policy=moving, clock=clock, sleep=clock.sleep, log=lambda *a: None,   # the operator takes 5 s
                 ask=lambda p: prompts.append((p, len(f.robot.moves))) or clock.sleep(5.0) or "")
    assert res[0]["label"] == "error" and "UserStopped" in res[0]["error"] and res[0]["steps"] == 6
    assert [p[0][:16] for p in prompts] == ["After the error:"] and prompts[0][1] == seen["moves"]   # nothing sent
    assert res[1]["label"] == "success" and res[1]["steps"] == 12 and len(f.robot.moves) > seen["moves"]


def test_control_command_success_rate_is_logged_per_rollout(monkeypatch, tmp_path):
    """franky's control_command_success_rate, read every step while a motion runs (0 with none: not counted), is
    kept per step beside the episode and summarised per rollout (min, mean) in the result and trials.csv; a
    trials.csv with the older columns keeps its rows."""
    clock = FakeClock()
    f = fake_franky(monkeypatch, clock)
    old = "time,ckpt,task,instruction,label,steps,successes_so_far,trials_so_far,rate,wilson_low,wilson_high,episode\n"
    (tmp_path / "trials.csv").write_text(old + "t,ck.pt,real,x,fail,3,0,1,0.000,0.000,0.793,episode_old.npz\n")
    t = {}

    def jitter(robot):                                   # moving; 0.90 for the steps at 0.3 and 0.4 s
        t0 = t.setdefault("t0", clock.t)
        robot.mode = RobotMode.Move
        robot.command_rate = 0.9 if t0 + 0.25 < clock.t < t0 + 0.45 else 1.0
    polled_by(f, jitter)
    o = opts(out=str(tmp_path), max_steps=10, ip="fake", ckpt="ck.pt")
    res = er.run(o, policy=FakePolicy(), clock=clock, sleep=clock.sleep, ask=lambda p: "", log=lambda *a: None)
    assert res[0]["command_success_min"] == pytest.approx(0.9) and res[0]["command_success_mean"] == pytest.approx(0.98)
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert rows[0]["episode"] == "episode_old.npz" and rows[0]["command_success_min"] == ""
    assert (rows[1]["command_success_min"], rows[1]["command_success_mean"], rows[1]["trials_so_far"]) == \
        ("0.900", "0.980", "2")
    timing = json.loads((tmp_path / "episode_000000.timing.json").read_text())
    assert timing["command_success"] == pytest.approx([1.0] * 3 + [0.9] * 2 + [1.0] * 5)


def test_a_failed_gripper_command_ends_the_rollout(monkeypatch):
    """The hand reports a failed grasp: the worker keeps it, and the next step's check ends the rollout as a
    MotionError (arm stopped, operator asked) instead of recording 'closed' for a hand that never moved."""
    clock = FakeClock()
    f = fake_franky(monkeypatch, clock)
    backend = hw.FrankyBackend("fake", log=lambda *a: None)
    f.hand.grasp = lambda *a, **kw: False
    request = backend.set_gripper
    backend.set_gripper = lambda closed: (request(closed), backend.hand.wait_idle(5.0))   # done before the next step
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    with pytest.raises(hw.MotionError, match="gripper close failed: the hand reports failure"):
        er.run_episode(closing_policy(), backend, {}, opts(max_steps=12), rec, clock, clock.sleep, log=lambda *a: None)
    assert len(rec["action"]) == 6                      # closed at step 5; seen at step 6
    backend.close()


class FlakyWidth:
    """A gripper whose width reads fail: `fail(n)` says whether the n-th read (0: at connect) raises."""

    def __init__(self, fail):
        self.fail, self.n = fail, 0

    @property
    def width(self):
        self.n += 1
        if self.fail(self.n - 1):
            raise RuntimeError("libfranka gripper: UDP receive: Timeout")
        return 0.05


def test_gripper_reader_survives_a_failed_read_and_gives_up_when_stale():
    """One failed width read is retried (the reader used to die on it); reads failing for longer than the
    staleness limit end the reader, and latest() says so."""
    w = hw.GripperWorker(FlakyWidth(lambda n: n == 1), log=lambda *a: None, period=0.001, stale_s=5.0)
    deadline = time.monotonic() + 5
    while w.gripper.n < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert w.latest()[0] == 0.05 and w.gripper.n >= 4
    w.close()
    w = hw.GripperWorker(FlakyWidth(lambda n: n >= 1), log=lambda *a: None, period=0.001, stale_s=0.05)
    deadline = time.monotonic() + 5
    while w.error is None and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(er.RobotError, match="could not be read for 0.05 s: RuntimeError"):
        w.latest()
    w.close()


# ----------------------------------------------------------------------------- record.py: what is not saved

def guided(monkeypatch, tmp_path, clock, cameras, max_steps=200, **fake):
    """record.py in guiding mode on the fake franky: SPACE starts, SPACE at 2 s closes the gripper; `lines` logs."""
    f = fake_franky(monkeypatch, clock, **fake)
    presses = [(clock.t, " "), (clock.t + 2.0, " ")]

    def keys():
        out = ""
        while presses and presses[0][0] <= clock.t:
            out += presses.pop(0)[1]
        return out
    a = record.build_parser().parse_args(["--robot", "franky", "--ip", "fake", "--task", "pick", "--instruction", "x",
                                          "--out", str(tmp_path), "--max-steps", str(max_steps), "--yes",
                                          "--camera-names", "front", "--image-size", "24", "32"])
    lines = []
    saved = record.record_franky(a, log=lines.append, keys=keys, cameras=cameras, clock=clock, sleep=clock.sleep)
    return f, saved, lines


class StallingCamera(FakeCamera):
    """A camera whose read at `at` takes `stall_s` on the injected clock."""

    def __init__(self, clock, at, stall_s):
        super().__init__()
        self.clock, self.at, self.stall_s = clock, at, stall_s

    def read(self):
        if self.n + 1 == self.at:
            self.clock.t += self.stall_s
        return super().read()


def test_record_rejects_an_episode_with_a_stall_the_mean_rate_hides(monkeypatch, tmp_path):
    """A 1 s stall in a 60 s demonstration at 20 Hz: the mean rate (19.7 Hz) is within 5%, the one step of 1.0 s
    is not within 1.5 periods: not saved, said in one line."""
    clock = FakeClock()
    _, saved, lines = guided(monkeypatch, tmp_path, clock, {"front": StallingCamera(clock, 600, 1.0)}, max_steps=1200)
    assert saved == [] and any("one step took 1.000 s" in l and "not saved" in l for l in lines), lines


def test_record_rejects_an_episode_with_a_failed_gripper_command(monkeypatch, tmp_path):
    clock = FakeClock()
    _, saved, _ = guided(monkeypatch, tmp_path, clock, {"front": FakeCamera()})
    assert len(saved) == 1                               # the same episode with a working hand is saved
    clock = FakeClock()
    monkeypatch.setattr(SlowHand, "grasp", lambda self, *a, **kw: False)
    _, saved, lines = guided(monkeypatch, tmp_path / "failed", clock, {"front": FakeCamera()})
    assert saved == [] and any("gripper close failed" in l and "not saved" in l for l in lines), lines


def test_record_keeps_measured_fps_when_appending(tmp_path):
    record.prepare_out(tmp_path, "franka_pick_place", ["front"], [24, 32], 20.0)
    record.note_rate(tmp_path, 19.8)
    record.prepare_out(tmp_path, "franka_stack", ["front"], [24, 32], 20.0)
    meta = data.load_meta(tmp_path)
    assert meta["measured_fps"] == 19.8 and set(meta["tasks"]) == {"franka_pick_place", "franka_stack"}
