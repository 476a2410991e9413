"""The bimanual scene, the task suite and the scripted experts."""
import numpy as np
import pytest

import world
from world import experts, sim
from replay import record_expert, solves


@pytest.mark.parametrize("task", list(sim.TASKS))
def test_expert_succeeds_and_stages_advance(task):
    env = sim.Env(task, render=False)
    for seed in (0, 1):
        ok, stage, steps, _ = experts.run_expert(task, seed, env)
        assert ok, f"{task} seed {seed}: expert failed at stage {stage}"
        assert stage == len(sim.STAGES[task]), "every progress stage is reached by a successful expert"
        # the evaluation step limit leaves room (about 1.5x the expert's longest episode)
        assert sim.TASKS[task].max_steps >= 1.3 * steps


@pytest.mark.parametrize("task", ["lift_block", "franka_pick_place"])
def test_grasp_natural_ignores_the_block_yaw(task, tmp_path):
    """data.py generate --grasp-natural: the expert's grasp rotation is the arm's natural top-down one whatever the
    block's yaw (by default it turns to the faces nearest it), and the expert still succeeds."""
    import data
    env = world.make_env(task, cameras=(), render=False)
    differs = 0
    for seed in range(4):
        env.reset(seed)
        x = experts.make_expert(env)
        name = env.layout.roles["target"]
        arm = min(env.arms, key=lambda a: np.linalg.norm(env.tcp_pos(a)[:2] - env.obj_pos(name)[:2]))
        natural = experts.topdown_rot(env.finger_dir(arm, env.obj_pos(name)))
        yaw_aware = x.grasp_rot(arm, name)
        x.GRASP_YAW = False
        assert np.allclose(x.grasp_rot(arm, name), natural)
        differs += not np.allclose(yaw_aware, natural, atol=1e-3)
        assert experts.run_expert(task, seed, env, grasp_natural=True)[0], f"{task} seed {seed}: expert failed"
    assert differs >= 3  # random yaws: the default grasp turns with the block
    if task == "lift_block":
        out = tmp_path / "n"
        data.generate(task, 1, out, cameras=["top"], image_size=(32, 32), quiet=True, grasp_natural=True)
        assert data.load_meta(out)["generation"]["grasp_natural"] is True
        with pytest.raises(data.DataError, match="not an unfinished run"):  # another expert: another folder
            data.generate(task, 1, out, cameras=["top"], image_size=(32, 32), quiet=True)


def test_scene_renders_every_camera():
    env = sim.Env("lift_block", image_size=(48, 64))
    obs = env.reset(0)
    assert set(obs["images"]) == set(sim.CAMERAS)
    for cam, img in obs["images"].items():
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        assert img.std() > 5, f"camera {cam} renders a flat image"
    assert obs["qpos"].shape == (14,) and obs["qpos"].dtype == np.float32
    assert np.allclose(obs["qpos"][sim.GRIPPER_INDICES], 1.0, atol=1e-3)  # grippers start open
    assert np.array_equal(obs["prev_qpos"], obs["qpos"])  # train.py --velocity: at reset, at rest
    moved = env.step(obs["qpos"] + np.r_[0.3, np.zeros(13)])
    assert np.array_equal(moved["prev_qpos"], obs["qpos"]) and not np.array_equal(moved["qpos"], obs["qpos"])
    with pytest.raises(ValueError, match="unknown camera"):
        sim.Env("lift_block", cameras=["nope"])
    with pytest.raises(ValueError, match="known tasks"):
        sim.Env("nope")


def test_grasp_is_friction_only_and_measured_gripper_partly_closed():
    """No welds or equality constraints on objects: a held block reads a partial opening, and releasing drops it."""
    env = sim.Env("lift_block", render=False)
    env.reset(0)
    m = env.model
    assert m.neq == 2 and all(m.eq_type[i] == sim.mujoco.mjtEq.mjEQ_JOINT for i in range(m.neq))  # finger coupling only
    x = experts.Expert(env)
    acts = list(zip(range(10_000), x.actions()))
    env.reset(0)
    x = experts.Expert(env)
    for i, a in enumerate(x.actions()):
        env.step(a)
        if i == len(acts) - 5:
            break
    arm = env.layout.arm_for[env.layout.roles["target"]]
    g = env.qpos()[sim.GRIPPER_INDICES[sim.ARMS.index(arm)]]
    assert 0.3 < g < 0.7, f"a grasped 4 cm block should leave the gripper partly open, got {g}"
    z0 = env.obj_pos(env.layout.roles["target"])[2]
    act = x.action()
    act[sim.GRIPPER_INDICES[sim.ARMS.index(arm)]] = 1.0  # open: the block must fall
    for _ in range(15):
        env.step(act)
    assert env.obj_pos(env.layout.roles["target"])[2] < z0 - 0.05


def test_layouts_depend_on_task_and_seed_only_and_cover_ranges():
    task = sim.TASKS["lift_block"]
    a, b = task.layout(7), task.layout(7)
    assert a.poses == b.poses and a.instruction == b.instruction
    xs, ys, yaws, targets, phr = [], [], [], set(), set()
    for s in range(300):
        lay = task.layout(s)
        x, y, yaw = lay.poses[lay.roles["target"]]
        xs.append(abs(x)), ys.append(y), yaws.append(yaw)
        targets.add(lay.roles["target"])
        phr.add(lay.instruction.split(" ")[0])
    assert max(xs) - min(xs) >= 0.18 and max(ys) - min(ys) >= 0.2, "positions cover at least +-10 cm"
    assert min(yaws) < -0.7 and max(yaws) > 0.7, "yaw covers about +-45 degrees"
    assert len(targets) == 4, "the instruction names different blocks"
    assert len(phr) >= 3, "at least three phrasings"
    for t in sim.TASKS.values():
        assert len(t.phrasings) >= 3


def test_instruction_decides_the_target():
    """Language matters: in lift_block the named block is not always the same colour or place."""
    lays = [sim.TASKS["lift_block"].layout(s) for s in range(40)]
    for lay in lays:
        colour = lay.roles["target"].split("_")[1]
        assert colour in lay.instruction
        others = [n for n in lay.poses if n.startswith("block_") and abs(lay.poses[n][1]) < 0.45 and n != lay.roles["target"]]
        assert len(others) == 2, "two distractor blocks on the table"


def test_blind_replay_fails():
    """Replaying one seed's expert actions on other seeds must (nearly always) fail: the tasks need perception."""
    env = sim.Env("lift_block", render=False)
    env.reset(0)
    actions = list(experts.Expert(env).actions())
    wins = 0
    for s in range(1, 9):
        env.reset(s)
        for a in actions:
            env.step(a)
        wins += env.success
    assert wins <= 2, f"blind replay succeeded on {wins}/8 seeds"


def test_idle_policy_makes_no_progress():
    env = sim.Env("place_block", render=False)
    env.reset(3)
    for _ in range(40):
        env.step(env.home_action())
    assert env.stage == 0 and not env.success


def test_half_turn_maps_a_demonstration_onto_the_other_arm():
    """The arm bases face each other across the table's centre: turned half a turn about it (objects at
    (-x, -y, yaw + pi)), a lift_block layout is solved by the expert's joint trajectory with the arms swapped.
    This is sim.SYMMETRY, which train.py --symmetry uses; without the turn the swapped demonstration fails."""
    env = sim.Env("lift_block", render=False)
    arms, S = set(), sim.SYMMETRY
    assert sim.ACTION_NAMES[7:] == [
        n.replace("left", "right") for n in sim.ACTION_NAMES[:7]]  # [left 7 | right 7] -> [right 7 | left 7]
    for seed in (0, 1, 2, 3):
        lay, acts = record_expert(env, seed)
        arms.add(lay.arm_for[lay.roles["target"]])
        swapped = acts[:, S["joint_index"]] * S["joint_sign"] + S["joint_offset"]
        for turn in (True, False):
            poses = {n: ((S["xy_sign"][0] * x, S["xy_sign"][1] * y, yaw + np.pi) if turn and abs(y) < 0.45
                         else (x, y, yaw)) for n, (x, y, yaw) in lay.poses.items()}  # parked ones stay
            ok = solves(env, lay, poses, swapped, seed)
            assert ok == turn, f"seed {seed}, turned {turn}: success {ok}"
    assert arms == {"left", "right"}, "the seeds should exercise both arms"
