"""eval_real.py's franky backend against franky-sim, a MuJoCo server speaking the real robot's protocol.

The fixture starts `franky-sim -s mujoco` on loopback (it binds the first free 127.x.y.z, ports 1337 and 1338,
and prints the address), and always stops it. Every wait is bounded: franky-sim runs at about half real time
on 2 cores. Skipped, with the reason, when franky-control or franky-sim is not installed
(pip install -r requirements-robot.txt).
"""
import csv
import importlib.util
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import eval_real as er  # noqa: E402

franky = pytest.importorskip("franky", reason="franky-control not installed (pip install -r requirements-robot.txt)")
if importlib.util.find_spec("franky_sim") is None:   # not imported: its pinocchio must stay out of this process
    pytest.skip("franky-sim not installed (pip install -r requirements-robot.txt)", allow_module_level=True)

START_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def sim_ip():
    exe = shutil.which("franky-sim")
    if exe is None:
        pytest.skip("franky-sim executable not on PATH")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([exe, "-s", "mujoco"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines = queue.Queue()

    def pump():                                          # readline can block: read in a thread, wait on a queue
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    seen, ip, deadline = [], None, time.monotonic() + START_TIMEOUT
    try:
        while ip is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(f"franky-sim did not report its address within {START_TIMEOUT:g} s:\n{''.join(seen)}")
            seen.append(line)
            m = re.search(r"using '([\d.]+)'", line)
            ip = m.group(1) if m else None
        yield ip
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class WavePolicy:
    """Policy interface without a checkpoint: joints 0 and 3 wave around the ready pose, the gripper is open
    for the first second and closed after. Raises on chunk `fail_at` if given."""
    fps, horizon, n_action_steps = 10.0, 10, 5
    action_names = [f"joint{i}" for i in range(7)] + ["gripper"]
    qpos_names = list(action_names)
    gripper_indices = [7]
    cameras = ["front"]                                  # --camera none: fed black images, nothing recorded
    image_size = (32, 32)

    def __init__(self, amplitude=0.15, fail_at=None):
        self.amplitude, self.fail_at, self.k, self.calls = amplitude, fail_at, 0, 0

    def reset(self):
        self.k = self.calls = 0

    def predict_chunk(self, obs_batch, generator=None):
        assert obs_batch[0]["images"]["front"].shape == (32, 32, 3)
        if self.calls == self.fail_at:
            raise RuntimeError("policy crashed mid-rollout")
        t = (self.k + np.arange(self.horizon)) / self.fps
        q = np.tile(er.READY, (self.horizon, 1))
        q[:, 0] += self.amplitude * np.sin(2 * np.pi * t / 3.0)
        q[:, 3] += 0.5 * self.amplitude * np.sin(2 * np.pi * t / 3.0)
        g = np.where(t < 1.0, 1.0, 0.0)
        self.k += self.n_action_steps
        self.calls += 1
        return np.column_stack([q, g])[None].astype(np.float32)

    def select_action(self, obs):
        return self.predict_chunk([obs])[0][0]


def options(ip, tmp_path, **kw):
    base = dict(robot="franky", ip=ip, realtime="ignore", camera="none", instruction="wave", task="wave",
                label="success", yes=True, out=str(tmp_path), max_steps=30, ckpt="wave-policy")
    base.update(kw)
    return er.Options(**base)


def robot_state(ip):
    """Connect afresh (the backend released its connection) and read joints, velocities, gripper width."""
    robot = franky.Robot(ip, realtime_config=franky.RealtimeConfig.Ignore)
    gripper = franky.Gripper(ip)
    q0 = np.array(robot.current_joint_state.position)
    time.sleep(0.3)
    s = (q0, np.array(robot.current_joint_state.position), np.array(robot.current_joint_state.velocity), gripper.width)
    del robot, gripper
    return s


def test_rollout_against_franky_sim(sim_ip, tmp_path):
    t = time.monotonic()
    res = er.run(options(sim_ip, tmp_path), policy=WavePolicy(), log=print)
    wall = time.monotonic() - t
    assert res[0]["label"] == "success" and res[0]["ended"] == "max-steps" and res[0]["steps"] == 30
    ep = data.load_episode(res[0]["episode"])
    assert ep["qpos"].shape == (30, 8) and ep["action"].shape == (30, 8) and ep["images"] == {}
    assert data.load_meta(tmp_path)["gripper_indices"] == [7]
    q, g = ep["qpos"][:, :7], ep["qpos"][:, 7]
    assert np.abs(q[0] - er.READY).max() < 0.05                 # homed
    assert np.ptp(q[:, 0]) > 0.05                               # the waypoint chunks moved joint 0
    assert np.abs(ep["action"][:, :7] - q).max() < 0.3          # and the arm followed the targets
    assert g[:5].min() > 0.9 and g[-1] < 0.1                    # opened by homing, then grasped (empty: ~0)
    assert list(ep["action"][:, 7]).count(0.0) == 20            # commanded closed from t = 1 s on
    q0, q1, dq, width = robot_state(sim_ip)
    assert np.abs(q1 - q0).max() < 2e-3 and np.abs(dq).max() < 0.02     # stopped: the arm is still
    assert width < 0.01
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [(r["label"], r["rate"]) for r in rows] == [("success", "1.000")]
    print(f"rollout of 30 steps at 10 Hz + homing: {wall:.1f} s wall, {res[0]['overruns']} late steps")


def test_dry_run_against_franky_sim_moves_nothing(sim_ip, tmp_path):
    before = robot_state(sim_ip)
    res = er.run(options(sim_ip, tmp_path, dry_run=True, max_steps=12, home=True), policy=WavePolicy(amplitude=0.5))
    after = robot_state(sim_ip)
    assert res[0]["steps"] == 12 and res[0]["label"] == "dry-run"
    assert data.load_episode(tmp_path / "dry-run" / "episode_000000.npz")["qpos"].shape == (12, 8)
    assert not (tmp_path / "trials.csv").exists()                # dry runs never mix with real trials
    assert np.abs(after[1] - before[1]).max() < 2e-3 and abs(after[3] - before[3]) < 1e-3


def test_error_mid_rollout_stops_the_arm(sim_ip, tmp_path):
    with pytest.raises(RuntimeError, match="crashed"):
        er.run(options(sim_ip, tmp_path, max_steps=40), policy=WavePolicy(amplitude=0.3, fail_at=2))
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [(r["label"], r["trials_so_far"]) for r in rows] == [("error", "0")]
    assert data.load_episode(tmp_path / "episode_000000.npz")["action"].shape == (10, 8)
    q0, q1, dq, _ = robot_state(sim_ip)
    assert np.abs(q1 - q0).max() < 2e-3 and np.abs(dq).max() < 0.02


def test_unreachable_sim_port_is_fast():
    t = time.monotonic()
    with pytest.raises(er.RobotError, match="refused"):
        er.FrankyBackend("127.77.66.55", realtime="ignore")
    assert time.monotonic() - t < 3
