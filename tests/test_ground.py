"""lab/ground.py (grounding pretraining) and train.py --vision-from / --freeze-vision, on tiny settings."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import data  # noqa: E402
from world import sim  # noqa: E402
from lab.ground import GROUND_SEED_OFFSET, Options as GroundOptions, ground, render, render_parallel  # noqa: E402
from synthetic import make_dataset  # noqa: E402
from train import Options, train  # noqa: E402

torch.set_num_threads(1)
TINY = dict(task="lift_block", layouts=8, holdout=4, batch_size=4, preset="tiny", keypoints=4, image_size=[32, 32],
            cameras=["top"], eval_every=2, warmup=1)


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    out = tmp_path_factory.mktemp("ground") / "g"
    subprocess.run([sys.executable, str(ROOT / "lab" / "ground.py"), "--out", str(out), "--task", "lift_block", "--layouts", "8",
                    "--holdout", "4", "--steps", "3", "--batch-size", "4", "--preset", "tiny", "--keypoints", "4",
                    "--image-size", "32", "32", "--cameras", "top", "--eval-every", "2", "--threads", "1"],
                   check=True, cwd=ROOT, capture_output=True, text=True)
    return out


def test_render_labels_are_the_named_objects():
    seeds = range(GROUND_SEED_OFFSET, GROUND_SEED_OFFSET + 3)
    images, targets, texts, roles = render("lift_block", seeds, ["top"], (32, 32))
    assert images.shape == (3, 1, 32, 32, 3) and targets.shape == (3, 2) and roles == ["target"]
    for s, y, text in zip(seeds, targets, texts):
        lay = sim.TASKS["lift_block"].layout(s)
        assert torch.allclose(y, torch.tensor(lay.poses[lay.roles["target"]][:2], dtype=torch.float32))
        assert text == lay.instruction
    assert not torch.equal(images[0], images[1])


def test_expert_frames_and_parallel_render():
    """expert_frac 1: every frame is from inside the expert's rollout (arms moved), labels follow the objects;
    two render workers give exactly one worker's result."""
    seeds = range(GROUND_SEED_OFFSET, GROUND_SEED_OFFSET + 4)
    home = render("lift_block", seeds, ["top"], (32, 32))
    moved = render("lift_block", seeds, ["top"], (32, 32), expert_frac=1.0)
    assert all(not torch.equal(a, b) for a, b in zip(home[0], moved[0]))
    assert moved[2] == home[2] and (moved[1] - home[1]).abs().max() < 0.3  # the same objects, maybe carried
    both = render_parallel("lift_block", seeds, ["top"], (32, 32), 0.5, workers=2)
    # --expert-steps 15: frames from the reach, before lift_block's grasp (step ~20): arms moved, block still put
    early = render("lift_block", seeds, ["top"], (32, 32), expert_frac=1.0, expert_steps=15, grasp_natural=True)
    assert all(not torch.equal(a, b) for a, b in zip(home[0], early[0])) and (early[1] - home[1]).abs().max() < 1e-3
    one = render("lift_block", seeds, ["top"], (32, 32), expert_frac=0.5)
    assert torch.equal(both[0], one[0]) and torch.equal(both[1], one[1]) and both[2] == one[2]


def test_ground_writes_checkpoint_and_curve(grounded):
    ck = torch.load(grounded / "ckpt.pt", weights_only=True)
    assert ck["kind"] == "grounding" and ck["step"] == 3 and ck["meta"]["roles"] == ["target"]
    assert any(k.startswith("kp_lang.") for k in ck["vision"])
    res = json.loads((grounded / "ground.json").read_text())
    assert [c["step"] for c in res["curve"]] == [2, 3] and len(res["mean_predictor_cm"]) == 1


def test_ground_resume_equals_uninterrupted(tmp_path):
    ground(GroundOptions(out=str(tmp_path / "full"), steps=4, **TINY))
    ground(GroundOptions(out=str(tmp_path / "cut"), steps=2, **TINY))  # as if killed after step 2
    ground(GroundOptions(out=str(tmp_path / "cut"), steps=4, resume=True, **TINY))
    a, b = (torch.load(tmp_path / r / "ckpt.pt", weights_only=True) for r in ("full", "cut"))
    assert a["step"] == b["step"] == 4 and a["curve"] == b["curve"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after resume"
    with pytest.raises(ValueError, match="options differ"):
        ground(GroundOptions(out=str(tmp_path / "cut"), steps=6, resume=True, **{**TINY, "lr": 1e-3}))


def test_decay_takes_the_rate_down_over_the_last_steps(tmp_path):
    from lab.ground import lr_at
    o = GroundOptions(out=str(tmp_path / "d"), steps=4, decay=2, **{**TINY, "lr": 1.0})
    assert [lr_at(s, o) for s in range(1, 5)] == [1.0, 1.0, 2 / 3, 1 / 3]
    assert [lr_at(s, GroundOptions(steps=4, **{**TINY, "lr": 1.0})) for s in range(1, 5)] == [1.0] * 4
    ground(dataclasses.replace(o, lr=5e-4))
    assert torch.load(tmp_path / "d" / "ckpt.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"] == \
        pytest.approx(5e-4 / 3)  # what the last step ran with
    with pytest.raises(ValueError, match="--decay must be in"):
        GroundOptions(steps=4, decay=5, **TINY)


def test_vision_from_loads_and_freezes(grounded, tmp_path):
    ds = make_dataset(tmp_path / "syn", n_episodes=2, T=20, image_size=(32, 32))
    train(Options(data=[str(ds)], out=str(tmp_path / "run"), steps=3, preset="small", batch_size=4, warmup=1,
                  vision_from=str(grounded / "ckpt.pt"), freeze_vision=True, save_every=100))
    g = torch.load(grounded / "ckpt.pt", weights_only=True)
    p = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert p["tokenizer"] == g["tokenizer"]
    assert p["model_config"]["keypoints"] == 4 and p["model_config"]["width"] == g["model_config"]["width"]  # not small's
    for k, v in g["vision"].items():
        assert torch.equal(p["model"][k], v) and torch.equal(p["ema"][k], v), f"{k} moved although frozen"
    # without --freeze-vision the loaded weights train
    train(Options(data=[str(ds)], out=str(tmp_path / "run2"), steps=3, batch_size=4, warmup=1, lr=1e-2,
                  vision_from=str(grounded / "ckpt.pt"), save_every=100))
    p2 = torch.load(tmp_path / "run2" / "ckpt.pt", weights_only=True)
    assert not torch.equal(p2["model"]["kp_logits.weight"], g["vision"]["kp_logits.weight"])


def test_grounded_policy_reads_the_grounding_head(grounded, tmp_path):
    from model import Policy
    ds = make_dataset(tmp_path / "syn", n_episodes=2, T=20, image_size=(32, 32))
    train(Options(data=[str(ds)], out=str(tmp_path / "run"), steps=3, batch_size=4, warmup=1, save_every=100,
                  vision_from=str(grounded / "ckpt.pt"), freeze_vision=True, grounded=True))
    g = torch.load(grounded / "ckpt.pt", weights_only=True)
    p = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert p["model_config"]["grounded"] == 2  # lift_block grounds one role: the target's (x, y)
    for k, v in g["head"].items():  # ground.py's head, frozen with the rest of the front end
        assert torch.equal(p["model"][f"ground_head.{k}"], v) and torch.equal(p["ema"][f"ground_head.{k}"], v)
    policy = Policy.load(tmp_path / "run" / "ckpt.pt")
    ep = data.load_episode(sorted(Path(ds).glob("episode_*"))[0])
    obs = {"images": {"top": ep["images"]["top"][0]}, "qpos": ep["qpos"][0], "instruction": ep["instruction"]}
    before = policy.predict_chunk([obs], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        policy.model.ground_head.bias.add_(1.0)  # move the grounded position: the actions must change
    after = policy.predict_chunk([obs], generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after))
    ds2 = make_dataset(tmp_path / "syn2", n_episodes=2, T=20, image_size=(32, 32), cameras=("left_wrist", "top"))
    with pytest.raises(data.DataError, match="--grounded reads the keypoints of cameras"):
        train(Options(data=[str(ds2)], out=str(tmp_path / "r2"), steps=1, vision_from=str(grounded / "ckpt.pt"),
                      grounded=True))
    with pytest.raises(ValueError, match="--grounded needs --vision-from"):
        Options(data=["x"], grounded=True)


def test_vision_from_errors(grounded, tmp_path):
    with pytest.raises(ValueError, match="--freeze-vision needs --vision-from or --init-from"):
        Options(data=["x"], freeze_vision=True)
    with pytest.raises(ValueError, match="not with --init-from"):
        Options(data=["x"], vision_from="a", init_from="b")
    ds = make_dataset(tmp_path / "syn48", n_episodes=2, T=20, image_size=(48, 48))
    with pytest.raises(data.DataError, match=r"image size \[48, 48\].*\[32, 32\]"):
        train(Options(data=[str(ds)], out=str(tmp_path / "r"), steps=1, vision_from=str(grounded / "ckpt.pt")))
    ds32 = make_dataset(tmp_path / "syn32", n_episodes=2, T=20, image_size=(32, 32))
    train(Options(data=[str(ds32)], out=str(tmp_path / "policy"), steps=1, preset="tiny", batch_size=2, warmup=1))
    with pytest.raises(ValueError, match="not a ground.py checkpoint"):
        train(Options(data=[str(ds32)], out=str(tmp_path / "r2"), steps=1, vision_from=str(tmp_path / "policy" / "ckpt.pt")))


def test_ground_init_from(grounded, tmp_path):
    """A curriculum step starts from the earlier run's weights (lr 0: unchanged), and refuses another task's."""
    ground(GroundOptions(out=str(tmp_path / "next"), steps=1, init_from=str(grounded / "ckpt.pt"),
                         **{**TINY, "lr": 0.0, "expert_frac": 0.5}))
    a, b = (torch.load(p, weights_only=True) for p in (grounded / "ckpt.pt", tmp_path / "next" / "ckpt.pt"))
    assert b["tokenizer"] == a["tokenizer"] and b["meta"]["target_mean"] == a["meta"]["target_mean"]
    for k, v in a["vision"].items():
        assert torch.equal(b["vision"][k], v), k
    with pytest.raises(ValueError, match="not a ground.py checkpoint of franka_stack's scene"):
        ground(GroundOptions(out=str(tmp_path / "other"), steps=1, init_from=str(grounded / "ckpt.pt"),
                             **{**TINY, "task": "franka_stack", "cameras": ["front"]}))


def test_ground_init_from_another_task_of_the_scene(grounded, tmp_path):
    """From another task of the scene: the front end's weights, a new head for the new roles, a new tokenizer
    whose pieces the old one shares keep their embeddings (lr 0: unchanged), and export lists both chains."""
    from lab.ground import export
    from model import Tokenizer
    ground(GroundOptions(out=str(tmp_path / "place"), steps=1, init_from=str(grounded / "ckpt.pt"),
                         **{**TINY, "lr": 0.0, "task": "place_block"}))
    a, b = (torch.load(p, weights_only=True) for p in (grounded / "ckpt.pt", tmp_path / "place" / "ckpt.pt"))
    assert b["meta"]["roles"] == ["pad", "target"] and b["head"]["weight"].shape[0] == 4
    assert all(v.equal(b["vision"][k]) for k, v in a["vision"].items() if k != "lang_emb.weight")
    ta, tb = Tokenizer(a["tokenizer"]), Tokenizer(b["tokenizer"])
    shared = [(i, ta.sp.piece_to_id(tb.sp.id_to_piece(i))) for i in range(tb.vocab_size)
              if tb.sp.id_to_piece(i) in {ta.sp.id_to_piece(j) for j in range(ta.vocab_size)}]
    assert any(tb.sp.id_to_piece(i) == "▁block" for i, _ in shared)  # a word both tasks' instructions use
    for i, j in shared:
        assert b["vision"]["lang_emb.weight"][i].equal(a["vision"]["lang_emb.weight"][j])
    assert tb.sp.piece_to_id("▁pad") not in dict(shared)  # a word lift_block's instructions never use
    info = export(str(tmp_path / "place" / "ckpt.pt"), str(tmp_path / "fe.pt"), layouts=2)
    assert len(info["stages"]) == 2 and "--task lift_block" in info["stages"][0]["command"]


def test_long_objects_are_located_by_two_points():
    """A rod or the bar: its centre and its end on the +x side, half its length along its axis."""
    from world import located
    import world
    env = world.make_env("handover", render=False)
    env.reset(3)
    names, xy = located(env)
    assert names == ["pad", "target", "target_end"]
    rod = env.layout.roles["target"]
    centre, end = xy[2:4], xy[4:6]
    assert np.allclose(centre, env.obj_pos(rod)[:2]) and end[0] > centre[0]
    assert np.isclose(np.linalg.norm(end - centre), sim.ROD_HALF[0], atol=1e-3)  # lying flat: the full half-length


def test_check_on_demonstration_frames(grounded, tmp_path):
    """`ground.py check` reads a demonstration folder's frames and labels them with the objects' positions at
    each step, from the episode's layout seed and its actions replayed; an episode the replay does not
    reproduce is refused."""
    from lab.ground import check
    folder = tmp_path / "demos"
    data.generate("lift_block", 1, folder, cameras=["top"], image_size=(32, 32), quiet=True)
    res = check(str(grounded / "ckpt.pt"), str(folder), steps=(0, 5), out=str(tmp_path / "c.json"))
    assert res["episodes"] == {"0": 1, "5": 1} and res["roles"] == ["target"]
    assert all(1 < e[0] < 100 for e in res["error_cm"].values())  # cm (not metres) on a table under a metre wide
    assert res["moved_cm"]["0"] == [0.0]
    assert json.loads((tmp_path / "c.json").read_text())["error_cm"] == res["error_cm"]
    path = data.episode_paths(folder)[0]
    with np.load(path) as z:
        ep = dict(z)
    ep["action"][:3, 0] += 0.5  # the first joint's targets edited: the replay leaves the recorded qpos
    np.savez(path, **ep)
    with pytest.raises(data.DataError, match="replaying its actions"):
        check(str(grounded / "ckpt.pt"), str(folder), steps=(0, 5))
    other = tmp_path / "place"
    data.generate("place_block", 1, other, cameras=["top"], image_size=(32, 32), quiet=True)
    with pytest.raises(data.DataError, match="task place_block"):
        check(str(grounded / "ckpt.pt"), str(other))


def test_scene_augmentation_moves_the_grounded_positions(grounded, tmp_path):
    """train.py --symmetry: the model sees the objects' world (x, y) moved by ground_matrix and ground_offset
    (ground.py's normalisation is kept in the model config); the identity leaves them."""
    from model import Policy
    names = list(sim.ACTION_NAMES)
    ds = make_dataset(tmp_path / "syn", n_episodes=2, T=20, image_size=(32, 32),
                      meta_overrides=dict(robot=sim.ROBOT, action_names=names, qpos_names=names))
    train(Options(data=[str(ds)], out=str(tmp_path / "run"), steps=2, batch_size=4, warmup=1, save_every=100,
                  vision_from=str(grounded / "ckpt.pt"), freeze_vision=True, grounded=True, grounded_only=True,
                  symmetry=True))
    meta = torch.load(grounded / "ckpt.pt", weights_only=True)["meta"]
    policy = Policy.load(tmp_path / "run" / "ckpt.pt")
    cfg = policy.model.cfg
    assert list(cfg.ground_mean) == meta["target_mean"] and list(cfg.ground_std) == meta["target_std"]
    images = torch.rand(3, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ids, mask = torch.ones(3, cfg.lang_len, dtype=torch.long), torch.ones(3, cfg.lang_len)
    state = torch.zeros(3, cfg.state_dim)
    c, s_ = math.cos(0.3), math.sin(0.3)
    matrix = torch.tensor([[[-1.0, 0.0], [0.0, -1.0]], [[1.0, 0.0], [0.0, 1.0]], [[c, -s_], [s_, c]]])
    offset = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.1, -0.2]])
    pos_of = lambda *a: policy.model.encode_prefix(images, ids, mask, state, *a)[0][-1]  # (3, 2) normalised
    world = lambda p: p * torch.tensor(meta["target_std"]) + torch.tensor(meta["target_mean"])
    with torch.no_grad():
        pos, pos_m = pos_of(), pos_of(matrix, offset)
    assert torch.allclose(world(pos_m), (matrix @ world(pos)[..., None])[..., 0] + offset, atol=1e-5)
    assert torch.allclose(pos_m[1], pos[1], atol=1e-6)
    assert not torch.allclose(world(pos[0]), -world(pos[0]), atol=1e-3)  # the turn had something to change
    syn = make_dataset(tmp_path / "j", n_episodes=2, T=20, image_size=(32, 32))  # joints j0..: no robot's layout
    with pytest.raises(data.DataError, match="--symmetry needs the joint layout"):
        train(Options(data=[str(syn)], out=str(tmp_path / "r2"), steps=1, vision_from=str(grounded / "ckpt.pt"),
                      grounded=True, grounded_only=True, symmetry=True))


def test_cached_front_end_gives_the_batches_it_replaces(grounded, tmp_path):
    """--freeze-vision --grounded-only --shift 0: the front end's output per frame is computed once and cached;
    the batches hold it in place of the images, everything else identical, and the model's losses on them
    are those on the images. The cache is reused, and another front end or changed data makes another one."""
    import shutil
    import dataset as T
    import train as TR
    from model import ModelConfig, Normalizer, Tokenizer
    ds = make_dataset(tmp_path / "syn", n_episodes=2, T=20, image_size=(32, 32))
    kw = dict(data=[str(ds)], steps=2, batch_size=8, warmup=1, save_every=100, vision_from=str(grounded / "ckpt.pt"),
              freeze_vision=True, grounded=True, grounded_only=True, shift=0, stage_weight=0.5, keyframe_weight=0.5)
    train(Options(out=str(tmp_path / "run"), **kw))
    caches = sorted(Path(ds).glob("grounded_*.npy"))
    assert len(caches) == 1
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    policy_model = TR.new_model(ModelConfig(**ck["model_config"]), 0)
    policy_model.load_state_dict(ck["model"])
    D = T.load_folders([str(ds)])
    lang = Tokenizer(ck["tokenizer"])(D["texts"], policy_model.cfg.lang_len)
    Dc = {**T.load_folders([str(ds)], images=False), "ground": T.grounded_positions(policy_model, D, [str(ds)], lang, "cpu")}
    assert Dc["images"] is None and Dc["ground"].shape == (40, 2)
    assert torch.allclose(Dc["ground"], torch.from_numpy(np.load(caches[0])))
    norm, cfg = Normalizer(ck["stats"]), policy_model.cfg
    mk = lambda D: T.make_batch(D, lang, norm, torch.Generator().manual_seed(0), 8, cfg, 0, "cpu", None)
    a, b = mk(D), mk(Dc)
    assert set(a) - set(b) == {"images"} and set(b) - set(a) == {"ground"}
    assert all(torch.equal(a[k], b[k]) for k in a if k != "images")
    noise, t = TR.sample_noise_time(torch.Generator().manual_seed(1), 8, cfg.horizon, cfg.action_dim, "cpu")
    with torch.no_grad():
        la, lb = policy_model(a, noise, t), policy_model(b, noise, t)
    for k in ("policy_loss", "stage_loss", "keyframe_l1"):
        assert torch.allclose(la[k], lb[k], atol=1e-6), (k, la[k], lb[k])
    assert lb["policy_loss"] > 0
    # reused: a second run reads the file (same front end, same data); another front end or other data: a new key
    stamp = caches[0].stat().st_mtime_ns
    train(Options(out=str(tmp_path / "run2"), **kw))
    assert sorted(Path(ds).glob("grounded_*.npy")) == caches and caches[0].stat().st_mtime_ns == stamp
    with torch.no_grad():
        policy_model.ground_head.bias.add_(0.1)
    T.grounded_positions(policy_model, D, [str(ds)], lang, "cpu")
    other = make_dataset(tmp_path / "syn_other", n_episodes=2, T=20, image_size=(32, 32), seed=7)
    shutil.copy(other / "episode_000001.npz", ds / "episode_000001.npz")
    train(Options(out=str(tmp_path / "run3"), **kw))
    assert len(set(Path(ds).glob("grounded_*.npy"))) == 3


def test_policy_trains_on_the_simulator_positions(grounded, tmp_path, monkeypatch):
    """--positions simulator: data.py records the named objects' (x, y) with every frame (world.located at that
    step, before its action); the policy's cached positions are those, normalised as the front end's head reports
    them, and the front end never runs on the frames. Data without them, or a run that is not a frozen cached one,
    gets one line."""
    import dataset as T
    import train as TR
    import world
    small = dict(cameras=["top"], image_size=(32, 32), quiet=True)
    data.generate("place_block", 1, tmp_path / "p", seed=3, **small)
    ep, env = data.load_episode(data.episode_paths(tmp_path / "p")[0]), world.make_env("place_block", render=False)
    env.reset(ep["seed"])  # replaying the recorded actions meets the recorded positions at every step
    for t in range(len(ep["action"])):
        names, xy = world.located(env)
        assert names == ep["position_roles"] == ["pad", "target"] and np.allclose(xy, ep["positions"][t], atol=1e-6), t
        env.step(ep["action"][t], render=False)
    assert np.abs(ep["positions"][-1] - ep["positions"][0])[2:].max() > 0.05  # the block was carried to the pad
    ds = tmp_path / "d"
    data.generate("lift_block", 2, ds, seed=3, **small)
    seen, real = {}, TR.simulator_positions
    monkeypatch.setattr(T, "grounded_positions", lambda *a, **k: pytest.fail("the front end ran on the frames"))
    monkeypatch.setattr(TR, "simulator_positions", lambda *a: seen.setdefault("ground", real(*a)))
    kw = dict(data=[str(ds)], steps=2, batch_size=8, warmup=1, save_every=100, vision_from=str(grounded / "ckpt.pt"),
              freeze_vision=True, grounded=True, grounded_only=True, shift=0, positions="simulator")
    train(Options(out=str(tmp_path / "run"), **kw))
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    mc, D = ck["model_config"], T.load_folders([str(ds)], images=False)
    back = seen["ground"] * torch.tensor(mc["ground_std"]) + torch.tensor(mc["ground_mean"])
    assert torch.allclose(back, D["positions"], atol=1e-5) and ck["meta"]["ground_roles"] == ["target"]
    train(Options(out=str(tmp_path / "run"), **{**kw, "steps": 2}, resume=True))  # the roles come from the checkpoint
    syn = make_dataset(tmp_path / "syn", n_episodes=2, T=20, image_size=(32, 32))
    with pytest.raises(data.DataError, match="holds no simulator positions"):
        train(Options(out=str(tmp_path / "run2"), **{**kw, "data": [str(syn)]}))
    with pytest.raises(ValueError, match="--positions simulator replaces the cached positions"):
        Options(out=str(tmp_path / "run3"), **{**kw, "shift": 4})
