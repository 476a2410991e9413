"""The MuJoCo Franka twin (twin.py): kinematics against the DH table, the 8-D layout, tasks and experts,
`eval_real.py --robot mujoco` (its results.json paired by `lab/diagnostics.py compare`), and `robot/record.py` on the twin
(segmented, then trained)."""
import json
import math
import sys
import types
from pathlib import Path

import mujoco
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402,F401  first: importing torch after a MuJoCo EGL renderer exists segfaults (tried)
import data  # noqa: E402
import stats  # noqa: E402
import eval_real as er  # noqa: E402
from robot import hardware as hw  # noqa: E402
import eval_sim  # noqa: E402
from lab import diagnostics  # noqa: E402
from robot import record  # noqa: E402
import segment  # noqa: E402
from world import experts, twin  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from replay import record_expert, solves  # noqa: E402

# Craig DH of the Franka, copied from ../shared/reference/franka.md (not imported from twin.py on purpose)
A = [0, 0, 0, 0.0825, -0.0825, 0, 0.088]
D = [0.333, 0, 0.316, 0, 0.384, 0, 0]
ALPHA = [0, -math.pi / 2, math.pi / 2, math.pi / 2, -math.pi / 2, math.pi / 2, math.pi / 2]
FR3_MIN = [-2.9007, -1.8361, -2.9007, -3.0770, -2.8763, 0.4398, -3.0508]
FR3_MAX = [2.9007, 1.8361, 2.9007, -0.1169, 2.8763, 4.6216, 3.0508]


def craig(a, d, alpha, theta):
    """RotX(alpha) @ TransX(a) @ RotZ(theta) @ TransZ(d), composed from elementary transforms."""
    def rx(t):
        return np.array([[1, 0, 0, 0], [0, math.cos(t), -math.sin(t), 0], [0, math.sin(t), math.cos(t), 0], [0, 0, 0, 1]])

    def rz(t):
        return np.array([[math.cos(t), -math.sin(t), 0, 0], [math.sin(t), math.cos(t), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])

    def tr(x, y, z):
        m = np.eye(4)
        m[:3, 3] = (x, y, z)
        return m
    return rx(alpha) @ tr(a, 0, 0) @ rz(theta) @ tr(0, 0, d)


@pytest.fixture(scope="module")
def env():
    return twin.FrankaEnv("franka_pick_place")


def test_forward_kinematics_match_the_dh_table(env):
    m, d = env.model, mujoco.MjData(env.model)
    flange = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "flange")
    tcp = env.tcp["arm"]
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.uniform(FR3_MIN, FR3_MAX)
        d.qpos[env.arm_qadr["arm"]] = q
        mujoco.mj_kinematics(m, d)
        T = np.eye(4)
        for i in range(7):
            T = T @ craig(A[i], D[i], ALPHA[i], q[i])
        T = T @ craig(0, 0.107, 0, 0)  # flange
        assert np.abs(d.site_xpos[flange] - T[:3, 3]).max() < 1e-6
        assert np.abs(d.site_xmat[flange].reshape(3, 3) - T[:3, :3]).max() < 1e-6
        # tcp: hand at -45 deg about the flange's z, 0.1034 m out; its x axis = the approach (hand z)
        H = T @ craig(0, 0, 0, -math.pi / 4) @ craig(0, 0.1034, 0, 0)
        assert np.abs(d.site_xpos[tcp] - H[:3, 3]).max() < 1e-6
        assert np.abs(d.site_xmat[tcp].reshape(3, 3)[:, 0] - H[:3, 2]).max() < 1e-6
    d.qpos[env.arm_qadr["arm"]] = er.READY
    mujoco.mj_kinematics(m, d)
    assert np.allclose(d.site_xpos[flange], [0.3069, 0.0, 0.5903], atol=1e-3)  # the known ready-pose flange
    assert np.allclose(env.jnt_range["arm"], np.c_[FR3_MIN, FR3_MAX])


def test_eight_d_layout_cameras_and_gripper_width(env):
    obs = env.reset(3)
    assert obs["qpos"].shape == (8,) and obs["qpos"][7] == pytest.approx(1.0)
    assert np.allclose(obs["qpos"][:7], er.READY, atol=1e-6)
    assert set(obs["images"]) == {"front", "wrist"} and all(v.shape == (96, 96, 3) for v in obs["images"].values())
    assert len({v.tobytes() for v in obs["images"].values()}) == 2 and all(v.std() > 5 for v in obs["images"].values())
    with pytest.raises(ValueError, match="8 finite numbers"):
        env.step(np.zeros(14))
    for _ in range(25):  # close on nothing: the measured width goes to 0 at the twin's gripper speed
        obs = env.step(np.r_[er.READY, 0.0])
    assert obs["qpos"][7] < 0.05 and np.abs(obs["qpos"][:7] - er.READY).max() < 1e-3
    assert twin.ACTION_NAMES[7] == "gripper" and twin.GRIPPER_INDICES == [7]


@pytest.mark.parametrize("task", list(twin.TASKS))
def test_expert_succeeds_within_the_caps(task):
    e = twin.FrankaEnv(task, render=False)
    e.reset(0)
    acts = []
    for a in experts.make_expert(e).actions():
        e.step(a)
        acts.append(a)
    acts = np.array(acts)
    assert e.success and e.stage == len(e.stages), (task, e.stage)
    assert len(acts) * 1.4 <= twin.TASKS[task].max_steps
    # joint speeds fit eval_real's default per-step cap (0.5 rad/s), so a policy imitating them is not capped
    assert np.abs(np.diff(acts[:, :7], axis=0)).max() * twin.FPS < 0.5
    assert len(segment.segment(acts[:, 7]).events) == twin.TASKS[task].gripper_events


def test_layouts_are_seeded_and_the_instruction_names_the_target():
    for task in twin.TASKS.values():
        a, b, c = task.layout(5), task.layout(5), task.layout(6)
        assert a == b and a.poses != c.poses
        target = a.roles.get("target") or a.roles["block1"]
        assert target.split("_")[1] in a.instruction
        assert len({task.layout(s).instruction for s in range(30)}) >= 3
        xy = np.array([p[:2] for p in a.poses.values()])
        assert (xy[:, 0] >= twin.REGION[0]).all() and (xy[:, 0] <= twin.REGION[1]).all()
    assert min(twin.eval_seeds(0, 3)) >= twin.EVAL_SEED_OFFSET


def test_idle_arm_makes_no_progress(env):
    env.reset(1)
    for _ in range(40):
        env.step(env.home_action())
    assert env.stage == 0 and not env.success


# ----------------------------------------------------------------------------- eval_real.py --robot mujoco

class ExpertPolicy:
    """Policy interface driven by the scripted expert on the backend's own env (an oracle for the loop)."""
    fps, horizon, n_action_steps, image_size = 20.0, 1, 1, (96, 96)
    action_names = qpos_names = twin.ACTION_NAMES
    gripper_indices, cameras = [7], ["front", "wrist"]

    def __init__(self, backend, idle=False):
        self.backend, self.idle, self.seen = backend, idle, []

    def reset(self):
        self.plan = experts.make_expert(self.backend.env).actions()

    def select_action(self, obs):
        self.seen.append(obs)
        a = np.r_[er.READY, 1.0] if self.idle else next(self.plan, None)
        return np.r_[self.backend.env.qpos()[:7], 1.0] if a is None else a

    def predict_chunk(self, batch, generator=None):
        return self.select_action(batch[0])[None, None]


EPISODE_KEYS = {"seed", "instruction", "true_instruction", "success", "furthest_stage", "stages_reached", "failure_type",
                "failure_step", "failure_to_nearest_event", "uniform_step_to_nearest_event", "gripper_events", "length"}


def test_eval_mujoco_scores_success_and_failure(tmp_path, monkeypatch):
    made = {}
    real = twin.TwinBackend

    def backend(*a, **kw):
        made["b"] = real(*a, **kw)
        return made["b"]
    monkeypatch.setattr(twin, "TwinBackend", backend)

    class Lazy(ExpertPolicy):  # the backend exists only inside evaluate_twin(): bind on first use
        def __init__(self, idle=False):
            self.idle, self.seen = idle, []

        def reset(self):
            self.backend = made["b"]
            super().reset()
    o = er.Options(robot="mujoco", task="franka_pick_place", episodes=2, query="step", out=str(tmp_path / "ok"), ckpt="x")
    res = er.evaluate_twin(o, policy=Lazy(), log=lambda *a: None)
    r = res["tasks"]["franka_pick_place"]
    assert r["successes"] == 2 and r["wilson95"] == stats.wilson(2, 2) and r["gripper_events"] == 2
    assert all(e["ended"] == "done" and e["failure_type"] == "success" and e["failure_step"] is None
               for e in r["per_episode"])
    assert [e["seed"] for e in r["per_episode"]] == twin.eval_seeds(0, 2)
    assert all(len(e["gripper_events"]) == 2 for e in r["per_episode"])   # the expert's grasp and release, commanded
    on_disk = json.loads((tmp_path / "ok" / "results.json").read_text())  # eval_sim.py's schema
    assert set(on_disk) == {"command", "git_revision", "config", "tasks", "wall_s"}
    assert EPISODE_KEYS <= set(on_disk["tasks"]["franka_pick_place"]["per_episode"][0])
    cfg = on_disk["config"]
    assert cfg["max_joint_speed"] == 0.5 and cfg["dynamics"] == 0.2 and cfg["arm"] == "fr3" and cfg["max_steps"] == 400
    o = er.Options(robot="mujoco", task="franka_pick_place", episodes=1, max_steps=30, out=str(tmp_path / "idle"), ckpt="x")
    res = er.evaluate_twin(o, policy=Lazy(idle=True), log=lambda *a: None)
    e = res["tasks"]["franka_pick_place"]["per_episode"][0]
    assert res["tasks"]["franka_pick_place"]["successes"] == 0 and e["failure_type"] == "motion-fail"
    assert e["length"] == 30 and e["failure_step"] == 0 and e["gripper_events"] == [] and res["config"]["max_steps"] == 30
    # lab/diagnostics.py compare pairs the two twin runs by seed (the first seed is in both)
    md = diagnostics.compare([str(tmp_path / "ok"), str(tmp_path / "idle")], str(tmp_path / "cmp"), ["expert", "idle"])
    paired = json.loads((tmp_path / "cmp" / "compare.json").read_text())["paired"]["idle"]["franka_pick_place"]
    assert (paired["pairs"], paired["b"], paired["c"]) == (1, 1, 0) and "franka_pick_place" in md


def test_eval_mujoco_renders_only_what_it_reads(tmp_path, monkeypatch):
    """--robot mujoco renders the cameras at query steps only, except in the rollouts saved as video; the
    outcomes are those of rendering every step, for a policy whose chunks depend on the pixels it reads."""
    made, reads = {}, []
    real, read = twin.TwinBackend, twin.TwinCamera.read
    monkeypatch.setattr(twin, "TwinBackend", lambda *a, **kw: made.__setitem__("b", real(*a, **kw)) or made["b"])
    monkeypatch.setattr(twin.TwinCamera, "read", lambda self: reads.append(self.name) or read(self))

    class Looking(ExpertPolicy):  # 5-step chunks of the expert's plan, the first joint nudged by the image
        horizon = n_action_steps = 5

        def __init__(self):
            self.seen = []

        def reset(self):
            self.plan = None  # per episode: the expert of the layout just reset

        def predict_chunk(self, batch, generator=None):
            if self.plan is None:
                self.plan = experts.make_expert(made["b"].env).actions()
            a = np.stack([next(self.plan, np.r_[er.READY, 1.0]) for _ in range(5)])
            a[:, 0] += 0.02 * batch[0]["images"]["front"].mean() / 255
            return a[None]

    runs = {}
    for video in (2, 0):
        reads.clear()
        o = er.Options(robot="mujoco", task="franka_pick_place", episodes=2, max_steps=40, video=video,
                       out=str(tmp_path / f"v{video}"), ckpt="x")
        res = er.evaluate_twin(o, policy=Looking(), log=lambda *a: None)
        keys = ("success", "length", "gripper_events", "stages_reached")
        runs[video] = ([[e[k] for k in keys] for e in res["tasks"]["franka_pick_place"]["per_episode"]], len(reads))
    assert runs[2][0] == runs[0][0]
    assert runs[0][1] <= 0.25 * runs[2][1], runs  # 1 step in 5 (two cameras), against every step


def test_compare_pairs_twin_results_folders(tmp_path):
    """Two twin results folders (per-episode rows written as eval_real.twin_episode writes them) are read and
    paired by seed by diagnostics.compare."""
    env = twin.FrankaEnv("franka_stack", render=False)

    def folder(name, outcomes):
        eps = []
        for seed, ok in outcomes.items():
            env.reset(seed)
            env.success = ok
            acts = np.tile(np.r_[twin.READY, 1.0], (20, 1))
            acts[5:12, 7] = 0.0                            # one grasp and one release
            eps.append(er.twin_episode(env, seed, {"action": list(acts), "instruction": "x"}, "max-steps"))
        res = {"command": "synthetic", "git_revision": "x", "config": {}, "wall_s": 1.0,
               "tasks": {"franka_stack": eval_sim.summarise("franka_stack", eps, 1.0)}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
        return str(tmp_path / name)
    a = folder("a", {11: True, 12: True, 13: False, 14: False})
    b = folder("b", {11: True, 12: False, 13: True, 14: True, 15: True})   # seed 15: no partner
    diagnostics.compare([a, b], str(tmp_path / "cmp"))
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    p = summary["paired"]["b"]["franka_stack"]
    assert (p["pairs"], p["b"], p["c"]) == (4, 1, 2)
    assert summary["tasks"]["franka_stack"]["variants"]["a"]["successes"] == 2
    e = json.loads((tmp_path / "a" / "results.json").read_text())["tasks"]["franka_stack"]["per_episode"][2]
    assert e["gripper_events"] == [5, 12] and e["failure_to_nearest_event"] is not None


class Replay:
    """A perfect imitator: the demonstration's actions, chunk by chunk (horizon 20, 10 executed)."""
    fps, horizon, n_action_steps, image_size, cameras = 20.0, 20, 10, (96, 96), []
    action_names = qpos_names = twin.ACTION_NAMES
    gripper_indices = [7]

    def __init__(self, acts):
        self.acts, self.k = acts, 0

    def reset(self):
        self.k = 0

    def predict_chunk(self, batch, generator=None):
        idx = np.minimum(np.arange(self.k, self.k + self.horizon), len(self.acts) - 1)
        self.k += self.n_action_steps
        return self.acts[idx][None]


@pytest.mark.parametrize("seed", [0, 3])
def test_demonstrations_pass_the_default_caps_unchanged_and_succeed(seed):
    e = twin.FrankaEnv("franka_pick_place", render=False)
    e.reset(seed)
    acts = []
    for a in experts.make_expert(e).actions():
        e.step(a)
        acts.append(a)
    acts = np.array(acts)
    b = twin.TwinBackend("franka_pick_place", cameras=())
    b.reset(seed)
    rec = {"images": {}, "qpos": [], "action": [], "instruction": "x"}
    ended = er.run_episode(Replay(acts), b, {}, er.Options(max_steps=400), rec, clock=b.clock, sleep=b.sleep,
                           log=lambda *a: None, done=lambda: b.env.success)
    sent = np.array(rec["action"])
    assert ended == "done" and b.env.success and len(sent) < len(acts)
    assert np.abs(sent[:, :7] - acts[:len(sent), :7]).max() < 1e-6  # no target was capped or clamped
    assert np.array_equal(sent[:, 7], acts[:len(sent), 7])          # the gate passes the clean 1/0 steps


def test_twin_backend_follows_chunks_and_caps():
    b = twin.TwinBackend("franka_stack", cameras=(), dynamics=0.2)
    b.reset(0)
    q0 = b.read_state()[0]
    target = q0 + np.r_[0.02, 0, 0, 0, 0, 0, 0]
    b.send_chunk(np.stack([q0 + (k + 1) / 4 * (target - q0) for k in range(4)]), 0.05)
    t0 = b.clock()
    b.sleep(0.2)
    assert b.clock() == pytest.approx(t0 + 0.2) and b.env.t == 4
    b.sleep(0.3)
    assert np.abs(b.read_state()[0] - target).max() < 2e-3  # reached and held
    b.send_chunk((q0 + 1.0)[None], 1.0)  # far target: the commanded joints move at dynamics x dq_max
    b.sleep(0.5)
    assert np.allclose(np.abs(b.ctrl - target), 0.2 * np.array(er.ARMS["fr3"].dq_max) * 0.5)
    b.stop()
    assert b.chunk is None


# ----------------------------------------------------------------------------- record on the twin

def test_record_on_twin_segments_and_trains(tmp_path):
    out = tmp_path / "rec"
    assert record.main(["--robot", "mujoco", "--task", "franka_pick_place", "--out", str(out), "--episodes", "2"]) == 0
    meta = data.load_meta(out)
    assert meta["action_names"] == twin.ACTION_NAMES and meta["gripper_indices"] == [7] and meta["fps"] == 20
    assert meta["measured_fps"] == 20.0                                # the simulated clock holds it exactly
    for p in data.episode_paths(out):
        ep = data.load_episode(p)
        assert np.allclose(ep["action"][:-1, :7], ep["qpos"][1:, :7])  # action[t] = measured joints at t+1
        assert set(np.unique(ep["action"][:, 7])) == {0.0, 1.0}
        for sig in ("action", "qpos"):
            seg, _ = segment.labels_for_episode(ep["action"], [7], signal=sig, qpos=ep["qpos"])
            assert [e[2] for e in seg.events] == ["close", "open"], sig
    run = tmp_path / "run"
    assert train.main(["--data", str(out), "--out", str(run), "--steps", "2", "--preset", "tiny", "--batch-size", "4",
                       "--threads", "1", "--log-every", "1"]) == 0
    assert (run / "ckpt.pt").is_file()
    # the trained checkpoint runs through eval_real.py --robot mujoco end to end (a few steps)
    assert er.main(["--robot", "mujoco", "--ckpt", str(run / "ckpt.pt"), "--task", "franka_pick_place",
                    "--episodes", "1", "--max-steps", "12", "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())["tasks"]["franka_pick_place"]
    assert res["episodes"] == 1 and res["per_episode"][0]["length"] == 12


def test_record_episode_reads_one_more_than_it_records():
    class Arm:
        def __init__(self):
            self.t = 0

        def read_state(self):
            return np.full(7, float(self.t)), 1.0 - 0.1 * self.t

        def gripper_command(self):
            return 0.0 if self.t >= 2 else 1.0

        def finished(self):
            return self.t >= 4

    arm, clock = Arm(), types.SimpleNamespace(t=0.0)

    def sleep(s):
        clock.t += s
        arm.t += 1
    ep = record.record_episode(arm, {}, 20.0, 100, lambda: clock.t, sleep)
    assert ep["action"].shape == (4, 8) and ep["qpos"].shape == (4, 8)
    assert np.allclose(ep["action"][:, 0], [1, 2, 3, 4]) and np.allclose(ep["qpos"][:, 0], [0, 1, 2, 3])
    assert list(ep["action"][:, 7]) == [1, 1, 0, 0] and ep["overruns"] == 0


def test_franky_guide_toggles_the_gripper_from_keys(monkeypatch):
    calls = []

    class Robot:
        has_errors = False
        current_joint_state = types.SimpleNamespace(position=list(er.READY))

        def __init__(self, ip, realtime_config=None):
            pass

        def join_motion(self, timeout=None):
            return True

        def set_guiding_mode(self, mode, elbow):
            calls.append(("guiding", list(mode), elbow))

    class Gripper:  # franky's blocking calls, run by the guide's GripperWorker thread
        width = 0.08

        def __init__(self, ip):
            pass

        def grasp(self, *a, **kw):
            calls.append("grasp")
            return True

        def open(self, speed):
            calls.append("open")
            return True
    fake = types.SimpleNamespace(Robot=Robot, Gripper=Gripper, Exception=RuntimeError,
                                 RealtimeConfig=types.SimpleNamespace(Ignore=0, Enforce=1))
    monkeypatch.setattr(hw, "require", lambda *a: fake)
    monkeypatch.setattr(hw, "check_reachable", lambda ip: None)
    keys = iter(["", " ", "", " ", "q"])
    g = record.FrankyGuide("1.2.3.4", keys=lambda: next(keys), log=lambda *a: None)
    g.start()
    cmds = []
    for _ in range(5):
        assert g.hand.wait_idle(5.0)                   # one command at a time, so the order below is fixed
        cmds.append(g.gripper_command())
    assert cmds == [1.0, 0.0, 0.0, 1.0, 1.0] and g.finished() and g.hand.wait_idle(5.0)
    assert calls == [("guiding", [True] * 6, True), "open", "grasp", "open"]
    q, w = g.read_state()
    assert np.allclose(q, er.READY) and w == 1.0
    g.close()


@pytest.mark.parametrize("task", ["franka_pick_place", "franka_stack"])
def test_mirror_maps_a_demonstration_onto_the_mirrored_layout(task):
    """twin.SYMMETRY (train.py --symmetry): mirrored in y (objects at (x, -y, -yaw)), a layout is solved by the
    expert's trajectory with joints 1, 3, 5, 7 reflected (7 about the ready pose's pi/4), which stays within the
    limits and starts at the ready pose; the unmirrored trajectory fails there."""
    S, env = twin.SYMMETRY, twin.FrankaEnv(task, render=False)
    ready = np.r_[twin.READY, 1.0]
    np.testing.assert_allclose(ready[list(S["joint_index"])] * S["joint_sign"] + S["joint_offset"], ready, atol=1e-12)
    for seed in (0, 1, 2):
        lay, acts = record_expert(env, seed)
        mirrored = acts[:, list(S["joint_index"])] * S["joint_sign"] + S["joint_offset"]
        assert (mirrored[:, :7] >= FR3_MIN).all() and (mirrored[:, :7] <= FR3_MAX).all()
        poses = {n: (S["xy_sign"][0] * x, S["xy_sign"][1] * y, -yaw) for n, (x, y, yaw) in lay.poses.items()}
        for name, traj in (("mirrored", mirrored), ("unmirrored", acts)):
            ok = solves(env, lay, poses, traj, seed)
            assert ok == (name == "mirrored"), f"seed {seed}, {name}: success {ok}"
