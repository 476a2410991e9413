"""train.py --action-space ee (ee.py): the tcp-pose view of joint actions, the IK back to joints, training on
it with --symmetry, and the Policy handing out joint targets."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import data  # noqa: E402
import ee  # noqa: E402
import sim  # noqa: E402
import twin  # noqa: E402
from synthetic import make_dataset  # noqa: E402

torch.set_num_threads(1)
SUITES = {"bimanual_6dof": sim, "franka": twin}


def near_home(kin, rng, n, scale=0.3):
    """(n, Dq) joint vectors around the ready pose, grippers anywhere in [0, 1]."""
    home = np.concatenate([np.r_[kin.env.home[a], 0.0] for a in kin.arms])
    q = home + rng.uniform(-scale, scale, (n, len(home)))
    q[:, kin.gripper] = rng.uniform(0, 1, (n, len(kin.gripper)))
    return q.astype(np.float32)


@pytest.mark.parametrize("robot", list(SUITES))
def test_pose_is_the_tcp_and_ik_reaches_it(robot):
    """to_ee holds each arm's tcp position (as the simulator places it) and rotation columns, and the gripper;
    to_joints, warm-started away from the answer, returns joints whose tcp pose is the target again."""
    kin, rng = ee.Kinematics(robot), np.random.default_rng(0)
    q = near_home(kin, rng, 12)
    pose = kin.to_ee(q).reshape(12, len(kin.arms), ee.PER_ARM)
    env = SUITES[robot].Env(next(iter(SUITES[robot].TASKS)), cameras=(), render=False)
    env.reset(0)
    for n in range(3):
        for k, a in enumerate(kin.arms):
            env.data.qpos[env.arm_qadr[a]] = q[n, kin.joints[k]]
        import mujoco
        mujoco.mj_forward(env.model, env.data)
        for k, a in enumerate(kin.arms):
            assert np.allclose(pose[n, k, :3], env.tcp_pos(a), atol=1e-5)
            R = env.data.site_xmat[env.tcp[a]].reshape(3, 3)
            assert np.allclose(ee.rotation_from_columns(pose[n, k, 3:9]), R, atol=1e-5)
            assert pose[n, k, 9] == q[n, kin.gripper[k]]
    start = q[0] + np.float32(0.05)                                            # IK starts 0.05 rad away
    back = kin.to_joints(kin.to_ee(q[:4]), start)                              # (4, Dq) along a 4-step "chunk"
    assert back.shape == (4, q.shape[1])
    assert np.allclose(kin.to_ee(back), kin.to_ee(q[:4]), atol=1e-3)           # same tcp poses and grippers
    assert kin.state(q).shape == (12, q.shape[1] + 9 * len(kin.arms))
    with pytest.raises(ValueError, match="kinematics of a simulated robot"):
        ee.Kinematics("ur5")


@pytest.mark.parametrize("robot", list(SUITES))
def test_symmetry_in_tcp_space(tmp_path, robot):
    """--symmetry with --action-space ee: a moved sample's tcp targets are the recorded ones moved by the scene's
    symmetry. Bimanual half turn: the left arm's moved position is the right arm's at (-x, -y, z) and vice
    versa; Franka mirror: (x, -y, z). The unmoved samples keep the plain tcp view."""
    from model import Normalizer, Tokenizer, train_tokenizer
    from train import end_effector_view, load_folders, make_batch, scene_augmentation
    suite = SUITES[robot]
    names, gi = list(suite.ACTION_NAMES), tuple(suite.GRIPPER_INDICES)
    kin = ee.Kinematics(robot)
    ds = make_dataset(tmp_path / robot, n_episodes=2, T=20, action_dim=len(names), gripper_indices=gi,
                      meta_overrides=dict(robot=robot, action_names=names, qpos_names=names))
    for p in data.episode_paths(ds):  # synthetic sines are far from any posture: put the arms near home
        e = data.load_episode(p)
        e["action"] = near_home(kin, np.random.default_rng(len(str(p))), len(e["action"]), 0.2)
        e["action"][:, list(gi)] = data.load_episode(p)["action"][:, list(gi)]
        e["qpos"] = np.concatenate([e["action"][:1], e["action"][:-1]])
        data.save_episode(p, e)
    D = load_folders([str(ds)])
    joint_actions = D["action"].clone()
    end_effector_view(D, symmetry=True)
    assert D["meta"]["action_space"] == "ee" and D["action"].shape == (40, 10 * len(gi))
    assert torch.allclose(D["action"], torch.from_numpy(kin.to_ee(joint_actions.numpy())))
    A, Dq = D["action"].shape[1], D["qpos"].shape[1]
    norm = Normalizer(dict(qpos_mean=[0.0] * Dq, qpos_std=[1.0] * Dq, action_mean=[0.0] * A, action_std=[1.0] * A))
    lang = Tokenizer(train_tokenizer(sorted(set(D["texts"])), 64))(D["texts"], 8)
    mk = lambda **kw: make_batch(D, lang, norm, torch.Generator().manual_seed(0), 64, 5, (32, 32), 0,
                                 D["meta"]["gripper_indices"], torch.device("cpu"), 0.0, **kw)
    plain, moved = mk(), mk(scene=scene_augmentation(D["meta"]), symmetry=True)
    f = (moved["ground_matrix"] != torch.eye(2)).any(2).any(1)                      # the moved samples
    assert 16 < int(f.sum()) < 48
    for k in ("state", "actions", "keyframe"):
        assert torch.equal(moved[k][~f], plain[k][~f]), k
    pos = lambda x: x.unflatten(-1, (len(gi), 10))[..., :3]                        # (..., arms, 3)
    want = pos(plain["actions"][f])
    want = want.flip(-2) * torch.tensor([-1.0, -1.0, 1.0]) if robot == "bimanual_6dof" else want * torch.tensor([1.0, -1.0, 1.0])
    assert torch.allclose(pos(moved["actions"][f]), want, atol=1e-4)
    assert not torch.allclose(pos(moved["actions"][f]), pos(plain["actions"][f]), atol=1e-3)
    grip = lambda x: x.unflatten(-1, (len(gi), 10))[..., 9]
    assert torch.equal(grip(moved["actions"][f]), grip(plain["actions"][f]).flip(-1))
    state_pos = lambda b: b["state"][f][:, len(names):].unflatten(1, (len(gi), 9))[..., :3]  # measured tcp
    want = state_pos(plain)
    want = want.flip(-2) * torch.tensor([-1.0, -1.0, 1.0]) if robot == "bimanual_6dof" else want * torch.tensor([1.0, -1.0, 1.0])
    assert torch.allclose(state_pos(moved), want, atol=1e-4)
    assert torch.equal(moved["state"][f][:, gi], plain["state"][f][:, gi].flip(-1))           # grippers follow their arm


def test_ee_policy_trains_and_acts_in_joints(tmp_path):
    """A policy trained with --action-space ee hands out joint targets (action_names): the network's tcp poses
    through IK from the measured joints; errors name the problem."""
    from model import Policy
    from train import Options, train
    names, gi = list(sim.ACTION_NAMES), tuple(sim.GRIPPER_INDICES)
    ds = make_dataset(tmp_path / "d", n_episodes=2, T=20, meta_overrides=dict(robot=sim.ROBOT, action_names=names,
                                                                              qpos_names=names))
    opts = dict(data=[str(ds)], preset="tiny", batch_size=4, warmup=1, save_every=100, steps=3)
    train(Options(out=str(tmp_path / "run"), action_space="ee", **opts))
    policy = Policy.load(tmp_path / "run" / "ckpt.pt")
    policy.binary_gripper = False  # compared with the network's raw output below
    assert policy.meta["action_space"] == "ee" and policy.cfg.action_dim == 20 and policy.cfg.state_dim == 14 + 18
    ep = data.load_episode(data.episode_paths(ds)[0])
    obs = {"images": {"top": ep["images"]["top"][0]}, "qpos": ep["qpos"][0], "instruction": ep["instruction"]}
    g = lambda: torch.Generator().manual_seed(0)
    chunk = policy.predict_chunk([obs], generator=g())[0]                              # (H, 14) joints
    assert chunk.shape == (policy.horizon, 14) and np.isfinite(chunk).all()
    images, ids, mask, state, ref = policy._inputs([obs])
    assert state.shape == (1, 32) and ref is None                                                      # joints + 2 tcp poses
    raw = policy.norm.unaction(policy.model.sample(images, ids, mask, state, torch.randn(
        (1, policy.horizon, 20), generator=g()))).detach().numpy()[0]                  # (H, 20) tcp poses
    assert np.array_equal(chunk, policy.kinematics.to_joints(raw, ep["qpos"][0]))     # IK from the measured joints
    assert np.array_equal(chunk[:, list(gi)], raw[:, [9, 19]])                         # grippers pass through
    with pytest.raises(ValueError, match="--waist-turn works on joint actions only"):
        Options(data=["x"], action_space="ee", grounded=True, grounded_only=True, vision_from="g", waist_turn=0.2)
    bad = make_dataset(tmp_path / "j", n_episodes=1, T=20)                             # joints j0..: no robot
    with pytest.raises(data.DataError, match="kinematics of a simulated robot"):
        train(Options(out=str(tmp_path / "r2"), action_space="ee", **{**opts, "data": [str(bad)]}))
    with pytest.raises(ValueError, match="the checkpoint predicts ee actions"):
        train(Options(out=str(tmp_path / "r3"), init_from=str(tmp_path / "run" / "ckpt.pt"), **opts))


def test_object_frame_batches(tmp_path):
    """--object-frame: the state is the grippers' openings and the tcp poses with (x, y) taken from the frame
    object's position; the actions' (x, y) likewise; under --symmetry the position moves with the scene, so a
    half-turned sample's relative positions are the other arm's, negated."""
    from model import Normalizer, Tokenizer, train_tokenizer
    from train import end_effector_view, load_folders, make_batch, scene_augmentation
    names, gi = list(sim.ACTION_NAMES), list(sim.GRIPPER_INDICES)
    kin = ee.Kinematics(sim.ROBOT)
    ds = make_dataset(tmp_path / "d", n_episodes=2, T=20, meta_overrides=dict(robot=sim.ROBOT, action_names=names,
                                                                              qpos_names=names))
    for p in data.episode_paths(ds):
        e = data.load_episode(p)
        e["action"] = near_home(kin, np.random.default_rng(len(str(p))), len(e["action"]), 0.2)
        e["qpos"] = np.concatenate([e["action"][:1], e["action"][:-1]])
        data.save_episode(p, e)
    D = load_folders([str(ds)])
    end_effector_view(D, symmetry=True)
    D["ground"] = torch.tensor(np.random.default_rng(0).uniform(-0.2, 0.2, (40, 2)), dtype=torch.float32)
    D["state_dim"] = 20
    A = 20
    norm = Normalizer(dict(qpos_mean=[0.0] * A, qpos_std=[1.0] * A, action_mean=[0.0] * A, action_std=[1.0] * A))
    lang = Tokenizer(train_tokenizer(sorted(set(D["texts"])), 64))(D["texts"], 8)
    mk = lambda **kw: make_batch(D, lang, norm, torch.Generator().manual_seed(0), 64, 5, (32, 32), 0, gi,
                                 torch.device("cpu"), 0.0, **kw)
    plain, moved = mk(), mk(scene=scene_augmentation(D["meta"]), symmetry=True)
    idx = torch.randint(0, 40, (64,), generator=torch.Generator().manual_seed(0))  # make_batch's first draw
    ref, raw = D["ground"][idx], D["qpos"][idx]                                      # (B, 2), (B, 14 + 18)
    assert torch.equal(plain["state"][:, :2], raw[:, gi])
    pose = plain["state"][:, 2:].unflatten(1, (2, 9))
    assert torch.allclose(pose[..., :2], raw[:, 14:].unflatten(1, (2, 9))[..., :2] - ref[:, None], atol=1e-6)
    assert torch.allclose(pose[..., 2:], raw[:, 14:].unflatten(1, (2, 9))[..., 2:])
    act = plain["actions"].unflatten(-1, (2, 10))
    assert torch.allclose(act[:, 0, :, :2], D["action"][idx].unflatten(-1, (2, 10))[..., :2] - ref[:, None], atol=1e-6)
    f = (moved["ground_matrix"] != torch.eye(2)).any(2).any(1)
    assert 16 < int(f.sum()) < 48
    rel = lambda b: b["actions"].unflatten(-1, (2, 10))[..., :2]                      # (B, H, arms, 2)
    assert torch.allclose(rel(moved)[f], -rel(plain)[f].flip(-2), atol=1e-4)
    assert torch.equal(moved["actions"][~f], plain["actions"][~f])


def test_object_frame_policy(tmp_path):
    """A --object-frame policy hands out joint targets: the network's object-frame tcp poses, plus where the
    grounding head puts the object now, through IK from the measured joints; the options are checked."""
    import subprocess
    from model import Policy
    from train import Options, train
    g = tmp_path / "g"
    subprocess.run([sys.executable, str(ROOT / "ground.py"), "--out", str(g), "--task", "lift_block", "--layouts", "8",
                    "--holdout", "4", "--steps", "2", "--batch-size", "4", "--preset", "tiny", "--keypoints", "4",
                    "--image-size", "32", "32", "--cameras", "top", "--eval-every", "2", "--threads", "1"],
                   check=True, cwd=ROOT, capture_output=True, text=True)
    names = list(sim.ACTION_NAMES)
    ds = make_dataset(tmp_path / "d", n_episodes=2, T=20, image_size=(32, 32),
                      meta_overrides=dict(robot=sim.ROBOT, action_names=names, qpos_names=names))
    o = dict(data=[str(ds)], steps=2, batch_size=4, warmup=1, save_every=100, vision_from=str(g / "ckpt.pt"),
             freeze_vision=True, grounded=True, grounded_only=True, shift=0, action_space="ee")
    train(Options(out=str(tmp_path / "run"), object_frame="target", symmetry=True, **o))
    policy = Policy.load(tmp_path / "run" / "ckpt.pt")
    policy.binary_gripper = False  # compared with the network's raw output below
    assert policy.meta["object_frame"] == 0 and policy.cfg.state_dim == 2 + 18
    ep = data.load_episode(data.episode_paths(ds)[0])
    obs = {"images": {"top": ep["images"]["top"][3]}, "qpos": ep["qpos"][3], "instruction": ep["instruction"]}
    chunk = policy.predict_chunk([obs], generator=torch.Generator().manual_seed(0))[0]   # (H, 14)
    with torch.no_grad():
        images, ids, mask, state, ref = policy._inputs([obs])
        assert torch.allclose(ref, policy.model.grounded_world(images, ids, mask))      # the one object, metres
        raw = policy.norm.unaction(policy.model.sample(images, ids, mask, state, torch.randn(
            (1, policy.horizon, 20), generator=torch.Generator().manual_seed(0)))).float()
    world = ee.object_actions(raw, ref, +1.0)[0].numpy()
    assert np.allclose(chunk, policy.kinematics.to_joints(world, ep["qpos"][3]), atol=1e-5)
    assert not np.allclose(world[:, :2], raw[0, :, :2].numpy())                          # the frame moved them
    with pytest.raises(ValueError, match="--object-frame needs --action-space ee, --grounded, --freeze-vision and --shift 0"):
        Options(data=["x"], object_frame="target", action_space="ee", grounded=True, vision_from="g")
    with pytest.raises(ValueError, match="the grounding head locates"):
        train(Options(out=str(tmp_path / "r2"), object_frame="pad", **o))
    with pytest.raises(ValueError, match="fine-tuning an --object-frame checkpoint"):
        train(Options(data=[str(ds)], out=str(tmp_path / "r3"), steps=2, batch_size=4, warmup=1, shift=0,
                      action_space="ee", init_from=str(tmp_path / "run" / "ckpt.pt")))


def test_relative_chunks_and_policy(tmp_path):
    """--relative: a batch's chunk positions (and keyframe) are taken from the measured tcp at the chunk's first
    frame, rotations and grippers untouched; the statistics cover whole relative chunks; the Policy adds the
    measured tcp back before IK."""
    from model import Normalizer, Policy, Tokenizer, train_tokenizer
    from train import Options, end_effector_view, load_folders, make_batch, relative_view, train
    names, gi = list(sim.ACTION_NAMES), list(sim.GRIPPER_INDICES)
    ds = make_dataset(tmp_path / "d", n_episodes=2, T=20, meta_overrides=dict(robot=sim.ROBOT, action_names=names,
                                                                              qpos_names=names))
    D = load_folders([str(ds)])
    end_effector_view(D, symmetry=False)
    A, S = 20, 14 + 18
    norm = Normalizer(dict(qpos_mean=[0.0] * S, qpos_std=[1.0] * S, action_mean=[0.0] * A, action_std=[1.0] * A))
    lang = Tokenizer(train_tokenizer(sorted(set(D["texts"])), 64))(D["texts"], 8)
    mk = lambda: make_batch(D, lang, norm, torch.Generator().manual_seed(0), 16, 5, (32, 32), 0, gi,
                            torch.device("cpu"), 0.0)
    plain = mk()
    D["meta"]["relative"] = True
    rel = mk()
    tcp = plain["state"][:, 14:].unflatten(1, (2, 9))[..., :3]                        # (B, arms, 3)
    p, r = plain["actions"].unflatten(-1, (2, 10)), rel["actions"].unflatten(-1, (2, 10))
    assert torch.allclose(r[..., :3], p[..., :3] - tcp[:, None], atol=1e-6)
    assert torch.equal(r[..., 3:], p[..., 3:]) and torch.equal(rel["state"], plain["state"])
    kp, kr = plain["keyframe"].unflatten(-1, (2, 10)), rel["keyframe"].unflatten(-1, (2, 10))
    assert torch.allclose(kr[..., :3], kp[..., :3] - tcp, atol=1e-6)
    view = relative_view(D, horizon=5)
    assert view["action"].shape == (40 * 5, A)
    assert view["action"][:, :3].abs().mean() < D["action"][:, :3].abs().mean()     # near the tcp, not the world
    opts = dict(data=[str(ds)], preset="tiny", batch_size=4, warmup=1, save_every=100, steps=2, action_space="ee")
    train(Options(out=str(tmp_path / "run"), relative=True, **opts))
    policy = Policy.load(tmp_path / "run" / "ckpt.pt")
    policy.binary_gripper = False  # compared with the network's raw output below
    ep = data.load_episode(data.episode_paths(ds)[0])
    obs = {"images": {"top": ep["images"]["top"][5]}, "qpos": ep["qpos"][5], "instruction": ep["instruction"]}
    chunk = policy.predict_chunk([obs], generator=torch.Generator().manual_seed(0))[0]
    with torch.no_grad():
        images, ids, mask, state, _ = policy._inputs([obs])
        raw = policy.norm.unaction(policy.model.sample(images, ids, mask, state, torch.randn(
            (1, policy.horizon, A), generator=torch.Generator().manual_seed(0)))).float()
    kin = policy.kinematics
    world = ee.relative_actions(raw, torch.from_numpy(kin.state(ep["qpos"][5][None])), 14, +1.0)[0].numpy()
    assert np.allclose(chunk, kin.to_joints(world, ep["qpos"][5]), atol=1e-5)
    with pytest.raises(ValueError, match="--relative needs --action-space ee"):
        Options(data=["x"], relative=True)
    with pytest.raises(ValueError, match="--relative must match the checkpoint, which was trained with it"):
        train(Options(out=str(tmp_path / "r2"), init_from=str(tmp_path / "run" / "ckpt.pt"), **opts))
