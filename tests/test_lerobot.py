"""interop/lerobot.py: LeRobotDataset v3.0 export and import, small (2 episodes of 20 frames, 32x32 images).

The round trip is bit-exact on qpos, actions and their gripper channels, and within the codec's tolerance on video;
a dataset that lerobot-dataset (0.4.4) writes is imported, one we write loads in its LeRobotDataset; a policy trains
on an imported dataset whose gripper is messy and in another convention, its stage labels from segment.py with the
import's settings. The tests need the optional extras (interop/requirements.txt); the two against lerobot-dataset
are skipped where it is not installed."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
pytest.importorskip("pyarrow", reason="the optional extras are not installed: pip install -r interop/requirements.txt")
pytest.importorskip("av", reason="the optional extras are not installed: pip install -r interop/requirements.txt")
import data  # noqa: E402
import dataset  # noqa: E402
import segment  # noqa: E402
from interop import lerobot  # noqa: E402
from synthetic import make_dataset  # noqa: E402

needs_lerobot = pytest.mark.skipif(importlib.util.find_spec("ledataset") is None,
                                   reason="lerobot-dataset is not installed (pip install -r interop/requirements.txt)")
# h264 at crf 18, yuv420p, 32x32 synthetic frames (hard edges, saturated colours: the chroma subsampling's worst
# case): measured mean 1.1-1.6 and 99th percentile of the absolute error 18-25 grey levels per camera
MEAN_TOL, P99_TOL = 3.0, 40


def pixel_errors(a, b):
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return d.mean(), np.percentile(d, 99)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ours") / "src", n_episodes=2, T=20, action_dim=8,
                        gripper_indices=(7,), cameras=("front", "wrist"), image_size=(32, 32))


@pytest.fixture(scope="module")
def exported(ours, tmp_path_factory):
    dst = tmp_path_factory.mktemp("lr") / "lerobot"
    assert lerobot.main(["export", str(ours), str(dst)]) == 0
    return dst


@pytest.fixture(scope="module")
def ledataset(tmp_path_factory):
    """lerobot-dataset's LeRobotDataset module, its Hugging Face caches in a temporary folder, offline."""
    env = pytest.MonkeyPatch()
    env.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf")))
    env.setenv("HF_HUB_OFFLINE", "1")
    from ledataset.datasets import lerobot_dataset
    yield lerobot_dataset
    env.undo()


def test_round_trip_is_exact_on_numbers_and_within_codec_tolerance_on_video(ours, exported, tmp_path):
    back = tmp_path / "back"
    assert lerobot.main(["import", str(exported), str(back)]) == 0  # ours: the mapping is in meta/stake.json
    assert data.load_meta(back) == data.load_meta(ours)
    paths = data.episode_paths(ours)
    assert [p.name for p in data.episode_paths(back)] == [p.name for p in paths]
    for p in paths:
        a, b = data.load_episode(p), data.load_episode(back / p.name)
        for k in ("qpos", "action"):
            assert b[k].dtype == np.float32 and np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)), k
        assert (a["instruction"], a["task"], a["seed"]) == (b["instruction"], b["task"], b["seed"])
        for cam in ("front", "wrist"):
            mean, p99 = pixel_errors(a["images"][cam], b["images"][cam])
            assert mean < MEAN_TOL and p99 < P99_TOL, (cam, mean, p99)


def test_yuv444p_at_crf_0_is_within_2_grey_levels(ours, tmp_path):
    """No chroma subsampling, lossless h264: only the RGB <-> YUV rounding is left (measured: at most 1)."""
    assert lerobot.main(["export", str(ours), str(tmp_path / "lr"), "--pix-fmt", "yuv444p", "--crf", "0"]) == 0
    assert lerobot.main(["import", str(tmp_path / "lr"), str(tmp_path / "back")]) == 0
    for p in data.episode_paths(ours):
        a, b = data.load_episode(p)["images"], data.load_episode(tmp_path / "back" / p.name)["images"]
        assert all(np.abs(a[c].astype(np.int16) - b[c]).max() <= 2 for c in a)


def test_export_writes_the_v3_layout(ours, exported):
    import pyarrow.parquet as pq
    for f in ("meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
              "data/chunk-000/file-000.parquet", "videos/observation.images.front/chunk-000/file-000.mp4",
              "videos/observation.images.wrist/chunk-000/file-000.mp4"):
        assert (exported / f).is_file(), f
    info = json.loads((exported / "meta/info.json").read_text())
    assert (info["codebase_version"], info["total_episodes"], info["total_frames"], info["fps"]) == ("v3.0", 2, 40, 20)
    assert info["features"]["observation.state"]["names"] == data.load_meta(ours)["qpos_names"]
    eps = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [(0, 20), (20, 40)]
    assert eps[1]["videos/observation.images.front/from_timestamp"] == 1.0
    rows = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    assert rows["index"].to_pylist() == list(range(40))
    qpos = np.concatenate([data.load_episode(p)["qpos"] for p in data.episode_paths(ours)])
    assert np.array_equal(np.array(rows["observation.state"].to_pylist(), np.float32), qpos)
    st = json.loads((exported / "meta/stats.json").read_text())
    assert np.allclose(st["observation.state"]["mean"], qpos.mean(0), atol=1e-6)
    assert np.array(st["observation.images.front"]["mean"]).shape == (3, 1, 1)


@needs_lerobot
def test_a_dataset_written_by_lerobot_dataset_is_imported(ledataset, tmp_path):
    """lerobot-dataset's own writer (h264): a Franka-like 8-D state and action whose gripper (index 7) is in
    metres, open high (0.08 open, 0 closed) with noise; imported with the explicit mapping."""
    feats = {"observation.state": {"dtype": "float32", "shape": (8,), "names": [f"joint{i}" for i in range(7)] + ["finger"]},
             "action": {"dtype": "float32", "shape": (8,), "names": [f"joint{i}" for i in range(7)] + ["finger"]},
             "observation.images.cam_high": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]}}
    src = tmp_path / "made_by_lerobot"
    ds = ledataset.LeRobotDataset.create("local/made", fps=10, features=feats, root=src, robot_type="franka",
                                         use_videos=True, vcodec="h264")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    written = []
    for e, text in enumerate(("pick up the cube", "put the cube down")):
        T = 30 + e
        state = rng.normal(size=(T, 8)).astype(np.float32)
        action = rng.normal(size=(T, 8)).astype(np.float32)
        action[:, 7] = np.where((np.arange(T) >= 10) & (np.arange(T) < 20), 0.0, 0.08) + rng.normal(0, 0.002, T)
        images = np.stack([np.stack([xx * 6 + t * 2, yy * 7, np.full_like(xx, 40 + 80 * e)], -1)
                           for t in range(T)]).astype(np.uint8)  # smooth gradients that move
        for t in range(T):
            ds.add_frame({"observation.state": state[t], "action": action[t],
                          "observation.images.cam_high": images[t], "task": text})
        ds.save_episode()
        written.append((state, action, images, text))
    ds.finalize()
    dst = tmp_path / "ours"
    assert lerobot.main(["import", str(src), str(dst), "--gripper", "finger", "--gripper-convention", "open-high",
                         "--cameras", "observation.images.cam_high=top"]) == 0
    meta = data.load_meta(dst)
    assert (meta["fps"], meta["gripper_indices"], meta["cameras"], meta["image_size"]) == (10, [7], ["top"], [32, 32])
    assert segment.open_is_high(meta["gripper_convention"]) and meta["segment"]["levels"] is None
    for p, (state, action, images, text) in zip(data.episode_paths(dst), written):
        ep = data.load_episode(p)
        assert np.array_equal(ep["qpos"], state) and np.array_equal(ep["action"], action)
        assert ep["instruction"] == text
        mean, p99 = pixel_errors(ep["images"]["top"], images)  # lerobot's settings: crf 30
        assert mean < 4 and p99 < 40, (mean, p99)  # measured 3.2-3.3 and 11
        assert segment.segment(ep["action"][:, 7]).count() == 2  # the close and the open, in metres


def lerobot_decoder_works() -> bool:
    """Whether lerobot-dataset 0.4.4 can decode video here: torchcodec (with the system's ffmpeg libraries) or
    torchvision.io.VideoReader (removed from torchvision 0.29's)."""
    try:
        import torchcodec.decoders  # noqa: F401  (loads its ffmpeg libraries)
        return True
    except Exception:
        import torchvision.io
        return hasattr(torchvision.io, "VideoReader")


@needs_lerobot
def test_our_export_loads_in_lerobot_dataset(ledataset, ours, exported, monkeypatch):
    import av
    import torch
    if not lerobot_decoder_works():  # its frame lookup kept (episode's from_timestamp + timestamp), decoded by PyAV
        def decode(path, timestamps, tolerance_s, backend=None):
            with av.open(str(path)) as box:
                frames = [(f.time, f.to_ndarray(format="rgb24")) for f in box.decode(video=0)]
            out = []
            for t in timestamps:
                ft, img = min(frames, key=lambda f: abs(f[0] - t))
                assert abs(ft - t) < tolerance_s, f"no frame at {t} s in {path}"
                out.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
            return torch.stack(out)                                                    # (n, 3, H, W) in [0, 1]
        monkeypatch.setattr(ledataset, "decode_video_frames", decode)
    ds = ledataset.LeRobotDataset("local/stake", root=exported)
    meta = data.load_meta(ours)
    assert (len(ds), ds.num_episodes, ds.fps) == (40, 2, 20)
    assert ds.features["action"]["names"] == meta["action_names"] and ds.features["action"]["shape"] == (8,)
    assert ds.meta.video_keys == ["observation.images.front", "observation.images.wrist"]
    assert list(ds.meta.tasks.index) == ["pick up the block"]
    for e, p in enumerate(data.episode_paths(ours)):
        ep = data.load_episode(p)
        for t in (0, 7, 19):
            item = ds[20 * e + t]
            assert item["episode_index"].item() == e and item["frame_index"].item() == t
            assert np.array_equal(item["observation.state"].numpy(), ep["qpos"][t])
            assert np.array_equal(item["action"].numpy(), ep["action"][t])
            assert item["task"] == ep["instruction"]
            frame = (item["observation.images.front"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            mean, p99 = pixel_errors(frame, ep["images"]["front"][t])
            assert mean < MEAN_TOL and p99 < P99_TOL, (e, t, mean, p99)


def messy_foreign_dataset(tmp_path):
    """A LeRobot dataset (our writer, then made foreign: no meta/stake.json) whose gripper (index 7) reads 0-255,
    255 = closed, with noise and one-step glitches: what segment.py's estimated levels and dwell are for. Returns
    its root and the clean signal's closed steps per episode."""
    src = make_dataset(tmp_path / "clean", n_episodes=2, T=24, action_dim=8, gripper_indices=(7,), cameras=("front",))
    rng, closed = np.random.default_rng(1), []
    for p in data.episode_paths(src):
        ep = data.load_episode(p)
        closed.append(ep["action"][:, 7] < 0.5)
        for k in ("action", "qpos"):
            g = 255 * (1 - ep[k][:, 7]) + rng.normal(0, 6, len(ep[k]))
            g[[2, 12]] = 128  # glitches, one step each
            ep[k][:, 7] = g
        data.save_episode(p, ep)
    assert lerobot.main(["export", str(src), str(tmp_path / "lr")]) == 0
    (tmp_path / "lr/meta/stake.json").unlink()
    return tmp_path / "lr", closed


def test_a_policy_trains_on_an_imported_dataset_with_stages_from_its_gripper(tmp_path, capsys):
    import train
    (src, closed), dst = messy_foreign_dataset(tmp_path), tmp_path / "imported"
    assert lerobot.main(["import", str(src), str(dst), "--gripper", "7", "--gripper-convention", "open-low",
                         "--min-dwell", "2", "--close-below", "0.5"]) == 0
    assert "gripper events per episode: 2 in 2" in capsys.readouterr().out
    meta = data.load_meta(dst)
    assert meta["segment"] == dict(signal="action", levels=None, close_below=0.5, open_above=0.8, min_dwell=2)
    D = dataset.load_folders([str(dst)])
    eps = [data.load_episode(p) for p in data.episode_paths(dst)]
    want = [segment.segment(ep["action"][:, [7]], open_is_high=False, close_below=0.5, min_dwell=2).stage for ep in eps]
    assert np.array_equal(D["stage"].numpy(), np.concatenate(want).astype(np.float32))
    assert all(np.array_equal(w[:, 0] == 1, c) for w, c in zip(want, closed))  # the clean signal's stages
    out = tmp_path / "run"
    argv = ["--data", str(dst), "--out", str(out), "--steps", "5", "--preset", "tiny", "--batch-size", "8",
            "--log-every", "1", "--warmup", "2", "--shift", "0"]
    assert train.main(argv) == 0
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(np.isfinite(l["loss"]) and "stage_loss" in l for l in lines)


def test_bad_input_gets_one_line(exported, tmp_path, capsys):
    import pyarrow.parquet as pq
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    t = pq.read_table(broken / "data/chunk-000/file-000.parquet")
    pq.write_table(t.slice(0, 39), broken / "data/chunk-000/file-000.parquet")  # the last frame is gone
    no_fps = tmp_path / "no_fps"
    shutil.copytree(exported, no_fps)
    info = json.loads((no_fps / "meta/info.json").read_text())
    del info["fps"]
    (no_fps / "meta/info.json").write_text(json.dumps(info))
    cases = [
        (["import", str(tmp_path / "none"), str(tmp_path / "a")], "meta/info.json: missing"),
        (["import", str(exported), str(tmp_path / "b"), "--state", "observation.joints"],
         "no numeric feature 'observation.joints'"),
        (["import", str(exported), str(tmp_path / "c"), "--gripper", "grip"], "--gripper grip: not an index nor a name"),
        (["import", str(broken), str(tmp_path / "d")], "episode 1 has 19 rows, meta/episodes says length 20"),
        (["import", str(exported), str(exported)], "exists and is not an empty folder"),
        (["import", str(no_fps), str(tmp_path / "f")], "metadata has no key 'fps'"),
        (["export", str(tmp_path / "none"), str(tmp_path / "e")], "meta.json: missing"),
    ]
    for argv, msg in cases:
        assert lerobot.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("interop.lerobot: error: ") and msg in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.tmp-*"))  # nothing half written
