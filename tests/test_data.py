"""Recording, the episode format, determinism, atomic resume, bad inputs."""
import json
import subprocess
import sys

import numpy as np
import pytest

import data
from conftest import ROOT

SMALL = dict(cameras=["top"], image_size=(32, 32), quiet=True)


def test_generate_is_deterministic_and_loads(tmp_path):
    data.generate("lift_block", 2, tmp_path / "a", seed=5, **SMALL)
    data.generate("lift_block", 2, tmp_path / "b", seed=5, **SMALL)
    meta = data.load_meta(tmp_path / "a")
    assert meta["gripper_indices"] == [6, 13] and len(meta["action_names"]) == 14 and meta["fps"] == 20
    for pa, pb in zip(data.episode_paths(tmp_path / "a"), data.episode_paths(tmp_path / "b")):
        ea, eb = data.load_episode(pa), data.load_episode(pb)
        for k in ("qpos", "action"):
            assert np.array_equal(ea[k], eb[k])
        assert np.array_equal(ea["images"]["top"], eb["images"]["top"])
        assert ea["instruction"] == eb["instruction"] and ea["seed"] == eb["seed"]
        T = len(ea["action"])
        assert ea["images"]["top"].shape == (T, 32, 32, 3) and ea["qpos"].shape == (T, 14)
        g = ea["action"][:, 6:14:7]
        assert set(np.unique(g)) <= {0.0, 1.0}, "commanded grippers are clean steps"


def test_resume_skips_finished_episodes_and_ignores_half_files(tmp_path):
    out = tmp_path / "d"
    data.generate("lift_block", 2, out, seed=0, **SMALL)
    first = [p.stat().st_mtime_ns for p in data.episode_paths(out)]
    (out / ".episode_000002.npz.abc.tmp").write_bytes(b"half written")  # a killed writer's leftover
    stats = data.generate("lift_block", 3, out, seed=0, **SMALL)
    paths = data.episode_paths(out)
    assert len(paths) == 3 and stats["saved"] == 3 and stats["attempts"] == 3
    assert [p.stat().st_mtime_ns for p in paths[:2]] == first, "finished episodes are not redone"
    assert data.load_episode(paths[2])["seed"] == 2


@pytest.mark.parametrize("seeds_recorded", [True, False], ids=["seeds-in-meta", "older-folder"])
def test_a_missing_or_corrupt_episode_is_recorded_again_in_place(tmp_path, seeds_recorded):
    """Rerunning generate on a folder with one episode truncated and one deleted records both again from their
    seeds, byte for byte (also for a folder from before meta.json kept the seeds: then from its neighbours')."""
    out = tmp_path / "d"
    data.generate("lift_block", 4, out, seed=3, **SMALL)
    before = {p.name: p.read_bytes() for p in data.episode_paths(out)}
    (out / "episode_000001.npz").write_bytes(before["episode_000001.npz"][:500])
    (out / "episode_000002.npz").unlink()
    if not seeds_recorded:
        meta = json.loads((out / "meta.json").read_text())
        del meta["generation_stats"]["seeds"]
        (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(data.DataError, match="episode_000001.npz: not a valid episode"):
        data.load_episode(out / "episode_000001.npz")
    stats = data.generate("lift_block", 4, out, seed=3, **SMALL)
    assert {p.name: p.read_bytes() for p in data.episode_paths(out)} == before
    assert stats["saved"] == 4 and stats["seeds"] == [3, 4, 5, 6] and stats["attempts"] == 4


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def boom(f):
        f.write(b"partial")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        data.atomic_write_bytes(tmp_path / "x.npz", boom)
    assert list(tmp_path.iterdir()) == []


def test_bad_episode_files_name_file_and_key(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match="bad.npz"):
        data.load_episode(tmp_path / "bad.npz")
    # an object array needs pickle; numpy would advise allow_pickle=True, unsafe for a file of unknown origin
    np.savez(tmp_path / "pickled.npz", qpos=np.array([{"x": 1}], dtype=object))
    with pytest.raises(data.DataError, match="pickled.npz: not a valid episode file") as err:
        data.load_episode(tmp_path / "pickled.npz")
    assert "allow_pickle" not in str(err.value)
    np.savez(tmp_path / "nokey.npz", qpos=np.zeros((3, 2), np.float32), instruction="x", task="t", seed=0)
    with pytest.raises(data.DataError, match="missing key 'action'"):
        data.load_episode(tmp_path / "nokey.npz")
    np.savez(tmp_path / "nan.npz", qpos=np.zeros((3, 2), np.float32), action=np.full((3, 2), np.nan, np.float32),
             instruction="x", task="t", seed=0)
    with pytest.raises(data.DataError, match="'action' holds NaN"):
        data.load_episode(tmp_path / "nan.npz")
    (tmp_path / "meta.json").write_text(json.dumps({"fps": 20}))
    with pytest.raises(data.DataError, match="meta.json: missing key 'action_names'"):
        data.load_meta(tmp_path)


def _cli(*args):
    return subprocess.run([sys.executable, "data.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_tasks_and_bad_inputs(tmp_path):
    r = _cli("tasks")
    assert r.returncode == 0
    lines = r.stdout.strip().splitlines()
    assert len(lines) >= 6
    events = sorted(int(l.split("events=")[1].split()[0]) for l in lines)
    assert events[0] == 1 and events[-1] >= 6 and {2, 4} <= set(events)
    r = _cli("generate", "--task", "nope", "--episodes", "1", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown task 'nope'" in r.stderr and "lift_block" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    r = _cli("generate", "--task", "lift_block", "--episodes", "1", "--out", str(tmp_path / "full"))
    assert r.returncode == 2 and "not empty" in r.stderr
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine", "nothing the user had is lost"
    r = _cli("show", str(tmp_path / "full"), "--out", str(tmp_path / "v.mp4"))
    assert r.returncode == 2 and "meta.json" in r.stderr


def test_cli_generate_and_show(tmp_path):
    out = tmp_path / "d"
    r = _cli("generate", "--task", "place_block", "--episodes", "1", "--out", str(out), "--cameras", "top",
             "--image-size", "32", "32")
    assert r.returncode == 0, r.stderr
    r = _cli("show", str(out), "--episode", "0", "--out", str(tmp_path / "v.mp4"))
    assert r.returncode == 0, r.stderr
    import imageio.v2 as imageio
    frames = imageio.mimread(tmp_path / "v.mp4")
    assert len(frames) == len(data.load_episode(data.episode_paths(out)[0])["action"])
