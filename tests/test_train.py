"""train.py end to end on tiny synthetic data: resume, overfitting, variants, checkpoints, the Policy, errors."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import data  # noqa: E402
from model import Policy  # noqa: E402
from synthetic import make_dataset  # noqa: E402
from train import Options, train  # noqa: E402

torch.set_num_threads(1)  # 2 shared cores: two threads on tiny ops mostly wait for each other
FAST = dict(preset="tiny", batch_size=8, log_every=1, save_every=1000, warmup=2, shift=2)
CFG = types.SimpleNamespace(horizon=5, image_size=(32, 32))  # what make_batch reads of a ModelConfig


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "lift", n_episodes=3, T=30)


def run(ds, out, **kw):
    return train(Options(data=[str(d) for d in (ds if isinstance(ds, list) else [ds])], out=str(out), **{**FAST, **kw}))


def obs_at(ep, t, cameras=("top",)):
    return {"images": {c: ep["images"][c][t] for c in cameras}, "qpos": ep["qpos"][t], "instruction": ep["instruction"]}


def test_resume_equals_uninterrupted(ds, tmp_path):
    kw = dict(steps=6, stage_weight=0.5, keyframe_weight=0.5)
    run(ds, tmp_path / "full", **kw)
    run(ds, tmp_path / "cut", stop_after=3, **kw)
    assert torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["step"] == 3
    run(ds, tmp_path / "cut", resume=True, **kw)
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    for i, s in a["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])
    drop = lambda p: [{k: v for k, v in json.loads(l).items() if k != "samples_per_s"}
                      for l in (p / "metrics.jsonl").read_text().splitlines()]
    assert drop(tmp_path / "full") == drop(tmp_path / "cut")  # same lines, none duplicated
    with pytest.raises(ValueError, match="options differ"):
        run(ds, tmp_path / "cut", resume=True, **{**kw, "seed": 1})


def test_ctrl_c_stops_at_the_step_end_saves_and_resumes_exactly(ds, tmp_path, monkeypatch, capsys):
    """Ctrl-C during step 3 (a real SIGINT, mid-step): the loop finishes the step, saves it, and train.py says so in
    one line (exit 130, no traceback); rerunning with --resume ends with the weights of an uninterrupted run."""
    import signal
    import dataset
    import train as train_module
    kw = dict(steps=5, stage_weight=0.5, keyframe_weight=0.5)
    run(ds, tmp_path / "full", **kw)
    real, calls = dataset.make_batch, []

    def make_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # as a terminal's Ctrl-C, while the step is under way
        return real(*a, **k)
    monkeypatch.setattr(dataset, "make_batch", make_batch)
    argv = ["--data", str(ds), "--out", str(tmp_path / "cut"), "--steps", "5", "--stage-weight", "0.5",
            "--keyframe-weight", "0.5", *[f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]]
    assert train_module.main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 3" in err and "--resume" in err and "Traceback" not in err
    assert torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    monkeypatch.setattr(dataset, "make_batch", real)
    assert train_module.main(argv + ["--resume"]) == 0
    a, b = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True) for d in ("full", "cut"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_overfit_one_episode(tmp_path):
    ds = make_dataset(tmp_path / "one", n_episodes=1, T=24, seed=5)
    ep = data.load_episode(data.episode_paths(ds)[0])
    kw = dict(steps=400, batch_size=32, lr=1e-3, warmup=10, shift=0, log_every=50, stage_weight=0, keyframe_weight=0)

    def chunk_error():
        policy = Policy.load(tmp_path / "run" / "ckpt.pt", use_ema=False)
        policy.binary_gripper = False  # the fit of the network's output, grippers as sampled
        errs = []
        for t in (0, 8, 16):
            pred = policy.predict_chunk([obs_at(ep, t)], generator=torch.Generator().manual_seed(t))[0]
            true = ep["action"][t: t + policy.horizon]
            errs.append(np.abs((pred[:len(true)] - true) / np.asarray(policy.norm.as_.cpu())).mean())
        return float(np.mean(errs))

    run(ds, tmp_path / "run", stop_after=1, **kw)
    before = chunk_error()
    run(ds, tmp_path / "run", resume=True, **kw)
    after = chunk_error()
    assert after < 0.5 * before, f"chunk error {before:.3f} -> {after:.3f}"  # seen: 1.16 -> 0.44


def test_variants_share_data_order_and_init(ds, tmp_path):
    lines = {}
    for s, k in ((0, 0), (1, 1), (1, 0)):
        run(ds, tmp_path / f"v{s}{k}", steps=3, stage_weight=s, keyframe_weight=k, seed=2)
        lines[s, k] = [json.loads(l) for l in (tmp_path / f"v{s}{k}" / "metrics.jsonl").read_text().splitlines()]
    first = {v: ls[0]["policy_loss"] for v, ls in lines.items()}
    assert len(set(first.values())) == 1, f"step-1 policy loss differs across variants: {first}"
    base = [l["stage_acc_threshold"] for l in lines[0, 0]]
    assert all([l["stage_acc_threshold"] for l in ls] == base for ls in lines.values())
    assert lines[1, 1][1]["policy_loss"] != lines[0, 0][1]["policy_loss"]  # StaKe did change training
    assert "stage_acc" in lines[1, 0][0] and "keyframe_l1" not in lines[1, 0][0] and "stage_loss" not in lines[0, 0][0]
    other = run(ds, tmp_path / "seed3", steps=1, seed=3)
    assert other["policy_loss"] != first[0, 0]


def test_checkpoint_round_trip_and_policy(ds, tmp_path):
    run(ds, tmp_path / "r", steps=3, stage_weight=1, keyframe_weight=1, stage_label="any", init_from="")
    ck = torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)
    for key in ("model", "ema", "optimizer", "step", "options", "model_config", "stats", "tokenizer", "meta", "git", "rng"):
        assert key in ck
    p1, p2 = Policy.load(tmp_path / "r" / "ckpt.pt"), Policy.load(tmp_path / "r" / "ckpt.pt", use_ema=False)
    for k, v in ck["ema"].items():
        assert torch.equal(p1.model.state_dict()[k], v)
    assert any(not torch.equal(p2.model.state_dict()[k], v) for k, v in ck["ema"].items())
    ep = data.load_episode(data.episode_paths(ds)[0])
    obs = [obs_at(ep, 3), obs_at(ep, 20)]
    c1 = p1.predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    c2 = Policy.load(tmp_path / "r" / "ckpt.pt").predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert c1.shape == (2, p1.horizon, 14) and c1.dtype == np.float32 and np.array_equal(c1, c2)
    assert (p1.fps, p1.cameras, p1.gripper_indices, p1.image_size) == (20.0, ["top"], [6, 13], (32, 32))
    # grippers leave as 0 or 1 (the demonstrations' two commands), snapped at 0.5; the joints as sampled
    p1.binary_gripper = False
    raw = p1.predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    p1.binary_gripper = True
    assert 0 < np.abs(raw[..., [6, 13]] - c1[..., [6, 13]]).max()
    assert np.array_equal(c1[..., [6, 13]], (raw[..., [6, 13]] >= 0.5).astype(np.float32))
    assert np.array_equal(np.delete(c1, [6, 13], -1), np.delete(raw, [6, 13], -1))
    # noise_scale 0: the flow from the noise's mean, one chunk whatever the generator; 1 (default): samples differ
    p1.noise_scale = 0.0
    z0, z1 = (p1.predict_chunk(obs, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    p1.noise_scale = 1.0
    assert np.array_equal(z0, z1) and not np.array_equal(c1, p1.predict_chunk(obs, generator=torch.Generator().manual_seed(1)))
    # select_action: n_action_steps per chunk, then a new query
    calls = []
    real = p1.predict_chunk
    p1.predict_chunk = lambda ob, generator=None: calls.append(1) or real(ob, generator)
    acts = [p1.select_action(obs[0]) for _ in range(p1.n_action_steps + 1)]
    assert len(calls) == 2 and acts[0].shape == (14,)
    p1.reset()
    p1.select_action(obs[0])
    assert len(calls) == 3
    # other image sizes are resized; a missing camera is named
    big = {**obs[0], "images": {"top": np.repeat(np.repeat(obs[0]["images"]["top"], 2, 0), 2, 1)}}
    assert p1.predict_chunk([big]).shape == (1, p1.horizon, 14)
    with pytest.raises(KeyError, match="'top'"):
        p1.predict_chunk([{**obs[0], "images": {"wrist": obs[0]["images"]["top"]}}])
    probe = p1.probe(obs[0])
    assert probe["stage_prob"].shape == (1,) and probe["keyframe"].shape == (14,)
    run(ds, tmp_path / "plain", steps=1, stage_weight=0, keyframe_weight=0)
    with pytest.raises(RuntimeError, match="no StaKe heads"):
        Policy.load(tmp_path / "plain" / "ckpt.pt").probe(obs[0])
    # --init-from: base weights from the checkpoint's EMA, tokenizer and stats reused, new heads fresh
    run(ds, tmp_path / "ft", steps=1, init_from=str(tmp_path / "plain" / "ckpt.pt"), lr=0.0)
    ft = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=True)
    src = torch.load(tmp_path / "plain" / "ckpt.pt", weights_only=True)
    assert ft["tokenizer"] == src["tokenizer"] and ft["stats"] == src["stats"] and "stage_query" in ft["model"]
    assert all(torch.equal(ft["model"][k], v) for k, v in src["ema"].items())


def test_bad_input_fails_before_training(ds, tmp_path):
    (tmp_path / "empty").mkdir()
    data.save_meta(tmp_path / "empty", json.loads((Path(ds) / "meta.json").read_text()))
    with pytest.raises(data.DataError, match="no episode"):
        run(tmp_path / "empty", tmp_path / "o1", steps=1)
    single = make_dataset(tmp_path / "franka", n_episodes=1, T=20, action_dim=8, gripper_indices=(7,))
    with pytest.raises(data.DataError, match="differs"):
        run([ds, single], tmp_path / "o2", steps=1)
    meta = json.loads((Path(ds) / "meta.json").read_text())
    del meta["gripper_indices"]
    bad = make_dataset(tmp_path / "nogrip", n_episodes=1, T=20)
    data.save_meta(bad, meta)
    with pytest.raises(data.DataError, match="gripper_indices"):
        run(bad, tmp_path / "o3", steps=1)
    run(ds, tmp_path / "ck14", steps=1)
    with pytest.raises(data.DataError, match="disagrees with the checkpoint"):
        run(single, tmp_path / "o4", steps=1, init_from=str(tmp_path / "ck14" / "ckpt.pt"))
    assert not any((tmp_path / f"o{i}" / "ckpt.pt").exists() for i in range(1, 5))


def test_cli_smoke(ds, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(ds), "--out", str(tmp_path / "run"), "--steps", "3",
           "--preset", "tiny", "--seed", "1", "--stage-weight", "0.1", "--keyframe-weight", "0.1", "--batch-size", "4",
           "--log-every", "1", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "params:" in r.stdout and "__1" in r.stdout
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows] == [1, 2, 3]
    for key in ("policy_loss", "stage_loss", "stage_acc", "stage_acc_threshold", "keyframe_l1", "lr", "samples_per_s"):
        assert np.isfinite(rows[-1][key])
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run(cmd[:3] + [str(tmp_path / "nowhere")] + cmd[4:], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("robot", ["bimanual_6dof", "franka"])
def test_scene_augmentation_moves_joints_and_objects_alike(tmp_path, robot):
    """--symmetry: a random half of the batch gets state, action chunk and keyframe mapped by the suite's
    SYMMETRY (bimanual: arms exchanged; Franka: joints 1, 3, 5, 7 reflected) and stage columns with their
    grippers. ground_matrix / ground_offset move the objects alike; everything else, and untouched samples,
    stay as they were."""
    from world import sim, twin
    from model import Normalizer, Tokenizer, train_tokenizer
    from dataset import load_folders, make_batch, scene_augmentation
    suite = sim if robot == "bimanual_6dof" else twin
    names, gi = list(suite.ACTION_NAMES), tuple(suite.GRIPPER_INDICES)
    ds = make_dataset(tmp_path / robot, n_episodes=2, T=20, action_dim=len(names), gripper_indices=gi,
                      meta_overrides=dict(robot=robot, action_names=names, qpos_names=names))
    D = load_folders([str(ds)])
    scene = scene_augmentation(D["meta"])
    A = len(names)  # identity normalisation: the batch holds raw values
    norm = Normalizer(dict(qpos_mean=[0.0] * A, qpos_std=[1.0] * A, action_mean=[0.0] * A, action_std=[1.0] * A))
    lang = Tokenizer(train_tokenizer(sorted(set(D["texts"])), 64))(D["texts"], 8)
    mk = lambda scene=None: make_batch(D, lang, norm, torch.Generator().manual_seed(0), 64, CFG, 0, "cpu", scene)
    plain, moved = mk(), mk(scene)
    assert "ground_matrix" not in plain
    for k in ("images", "lang_ids", "lang_mask", "action_valid"):
        assert torch.equal(plain[k], moved[k]), k
    # --symmetry
    S, M, t = suite.SYMMETRY, moved["ground_matrix"], moved["ground_offset"]
    f = (M != torch.eye(2)).any(2).any(1)                                            # the mirrored samples
    assert 16 < int(f.sum()) < 48 and (t == 0).all()
    assert torch.equal(M[f], torch.diag(torch.tensor(S["xy_sign"])).expand(int(f.sum()), 2, 2))
    by_hand = lambda x: x[..., list(S["joint_index"])] * torch.tensor(S["joint_sign"]) + torch.tensor(S["joint_offset"])
    for k in ("state", "actions", "keyframe"):
        assert torch.equal(moved[k][~f], plain[k][~f]), k
        assert torch.allclose(moved[k][f], by_hand(plain[k][f]), atol=1e-6), k
        assert not torch.allclose(moved[k][f], plain[k][f]), k
    stage = plain["stage"][f]  # per gripper: the arms' columns exchange; the Franka's one gripper stays
    assert torch.equal(moved["stage"][f], stage.flip(1) if robot == "bimanual_6dof" else stage)
    bad = make_dataset(tmp_path / "j", n_episodes=1, T=20)  # joints j0..: no simulated robot's layout
    with pytest.raises(data.DataError, match="--symmetry needs the joint layout"):
        scene_augmentation(load_folders([str(bad)])["meta"])
    with pytest.raises(ValueError, match="--symmetry needs --grounded-only"):
        Options(data=["x"], symmetry=True)


def test_velocity_state(tmp_path):
    """--velocity: the state is (qpos, qpos - previous qpos), the first row of an episode at rest; --symmetry moves
    both rows alike (so the change is the recorded one, re-indexed and signed); the Policy reads obs['prev_qpos'] and names it when it is missing."""
    from world import sim
    from model import Normalizer, Tokenizer, train_tokenizer
    from dataset import load_folders, make_batch, previous_qpos, scene_augmentation
    names = list(sim.ACTION_NAMES)
    ds = make_dataset(tmp_path / "d", n_episodes=2, T=20, meta_overrides=dict(robot=sim.ROBOT, action_names=names,
                                                                              qpos_names=names))
    run(ds, tmp_path / "run", steps=2, velocity=True)
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ck["meta"]["velocity"] and ck["model_config"]["state_dim"] == 28 and len(ck["stats"]["qpos_mean"]) == 28
    ep = data.load_episode(data.episode_paths(ds)[0])
    policy = Policy.load(tmp_path / "run" / "ckpt.pt")
    with pytest.raises(KeyError, match="prev_qpos"):
        policy.predict_chunk([obs_at(ep, 5)])
    obs = obs_at(ep, 5) | {"prev_qpos": ep["qpos"][4]}
    state = policy._inputs([obs])[3]                                                   # (1, 28) normalised
    want = np.r_[ep["qpos"][5], ep["qpos"][5] - ep["qpos"][4]]
    assert torch.allclose(state, policy.norm.state(torch.from_numpy(want[None]).float()), atol=1e-6)
    g = lambda: torch.Generator().manual_seed(0)
    still = policy.predict_chunk([obs | {"prev_qpos": ep["qpos"][5]}], generator=g())
    assert not np.allclose(policy.predict_chunk([obs], generator=g()), still)           # the change is read
    with pytest.raises(ValueError, match="--velocity must match"):
        run(ds, tmp_path / "ft", steps=1, init_from=str(tmp_path / "run" / "ckpt.pt"))
    # the batches: unmoved and mirrored (--symmetry)
    D = load_folders([str(ds)])
    D["qpos_prev"] = previous_qpos(D)
    assert torch.equal(D["qpos_prev"][[0, 20]], D["qpos"][[0, 20]])                  # each episode starts at rest
    assert torch.equal(D["qpos_prev"][[5, 25]], D["qpos"][[4, 24]])
    norm = Normalizer(dict(qpos_mean=[0.0] * 28, qpos_std=[1.0] * 28, action_mean=[0.0] * 14, action_std=[1.0] * 14))
    lang = Tokenizer(train_tokenizer(sorted(set(D["texts"])), 64))(D["texts"], 8)
    S = scene_augmentation(D["meta"])
    mk = lambda scene=None: make_batch(D, lang, norm, torch.Generator().manual_seed(0), 64, CFG, 0, "cpu", scene)
    idx = torch.randint(0, 40, (64,), generator=torch.Generator().manual_seed(0))     # make_batch's first draw
    delta = D["qpos"][idx] - D["qpos_prev"][idx]
    plain = mk()
    assert torch.equal(plain["state"][:, :14], D["qpos"][idx]) and torch.allclose(plain["state"][:, 14:], delta)
    moved = mk(S)
    f = (moved["ground_matrix"] != torch.eye(2)).any(2).any(1)                           # the moved samples
    assert 16 < int(f.sum()) < 48 and torch.equal(moved["state"][~f], plain["state"][~f])
    assert torch.allclose(moved["state"][f][:, 14:], delta[f][:, S["index"]] * S["sign"], atol=1e-6)
    assert not torch.allclose(moved["state"][f][:, 14:], delta[f], atol=1e-3)
