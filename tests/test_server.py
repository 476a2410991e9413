"""interop/: openpi's codec byte for byte, the policy server's protocol (metadata, chunks, timings, errors,
/healthz), DROID's keys, and eval_sim.py through the server giving the in-process outcomes on the same seeds."""
import contextlib
import dataclasses
import json
import socket
import threading
import urllib.request

import numpy as np
import pytest
import torch

EXTRAS = "the optional extras are not installed: pip install -r interop/requirements.txt"
pytest.importorskip("msgpack", reason=EXTRAS)
pytest.importorskip("websockets", reason=EXTRAS)
from websockets.exceptions import ConnectionClosedError  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

import data  # noqa: E402
import eval_sim  # noqa: E402
from interop import client, server  # noqa: E402
from model import VLA, ModelConfig, Policy, Tokenizer, train_tokenizer  # noqa: E402
from world import twin  # noqa: E402

TINY = dict(patch_size=16, vit_width=32, vit_depth=1, vit_heads=2, width=32, depth=1, heads=2, expert_width=32,
            horizon=4, n_action_steps=2, lang_len=8)

# openpi-client 0.1.2's msgpack_numpy.packb of OPENPI_OBJ (its source, run on numpy 2: it imports only msgpack and
# numpy; the package itself pins numpy < 2 and does not install here)
OPENPI_OBJ = {"actions": np.arange(6, dtype=np.float32).reshape(2, 3), "state": np.array([1, -2], dtype=np.int64),
              "image": np.array([[[0, 128, 255]]], dtype=np.uint8), "prompt": "pick", "k": np.int64(3),
              "x": np.float32(0.5), "ok": np.bool_(True)}
OPENPI_BYTES = bytes.fromhex(
    "87a7616374696f6e7384c40b5f5f6e6461727261795f5fc3c40464617461c418000000000000803f0000004000004040000080400000a040"
    "c4056474797065a33c6634c4057368617065920203a5737461746584c40b5f5f6e6461727261795f5fc3c40464617461c4100100000000"
    "000000feffffffffffffffc4056474797065a33c6938c40573686170659102a5696d61676584c40b5f5f6e6461727261795f5fc3c40464"
    "617461c4030080ffc4056474797065a37c7531c405736861706593010103a670726f6d7074a47069636ba16b83c40d5f5f6e7067656e65"
    "7269635f5fc3c4046461746103c4056474797065a33c6938a17883c40d5f5f6e7067656e657269635f5fc3c40464617461cb3fe0000000"
    "000000c4056474797065a33c6634a26f6b83c40d5f5f6e7067656e657269635f5fc3c40464617461c3c4056474797065a37c6231")


def same(a, b) -> bool:
    """Equal values, dtypes and shapes, recursively."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, np.generic)):
        return type(a) is type(b) and a.dtype == b.dtype and np.shape(a) == np.shape(b) and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def test_codec_is_openpi_clients_byte_for_byte():
    assert client.packb(OPENPI_OBJ) == OPENPI_BYTES
    assert same(client.unpackb(OPENPI_BYTES), OPENPI_OBJ)
    for bad in (np.zeros(2, np.complex64), np.array([None], object), np.zeros(2, "V4"), np.complex128(1j)):
        with pytest.raises(ValueError, match="Unsupported dtype"):
            client.packb({"x": bad})
    try:  # where openpi-client installs (numpy < 2), against its own codec too
        from openpi_client import msgpack_numpy
    except ImportError:
        return
    rng = np.random.default_rng(0)
    obj = {"a": rng.normal(size=(3, 4)), "b": rng.integers(0, 255, (2, 5, 3), dtype=np.uint8), "c": np.float64(2.5)}
    assert msgpack_numpy.packb(obj) == client.packb(obj)
    assert same(msgpack_numpy.unpackb(client.packb(obj)), obj)


# ----------------------------------------------------------------------------- tiny policies and a server

def tiny_policy(meta: dict, velocity: bool = False) -> Policy:
    """An untrained Policy with `meta`'s layout (32 x 32 images)."""
    tok = Tokenizer(train_tokenizer(["lift the red block", "pick up the cube", "put it in the bin"], 64))
    A, Dq = len(meta["action_names"]), len(meta["qpos_names"]) * (2 if velocity else 1)
    cfg = ModelConfig(**TINY, vocab_size=tok.vocab_size, action_dim=A, state_dim=Dq, n_cameras=len(meta["cameras"]),
                      image_size=tuple(meta["image_size"]))
    stats = dict(qpos_mean=[0.0] * Dq, qpos_std=[1.0] * Dq, action_mean=[0.5] * A, action_std=[0.3] * A)
    return Policy(VLA(cfg, seed=0), tok, stats, {**meta, "velocity": velocity})


def save_ckpt(policy: Policy, path) -> str:
    torch.save({"model_config": dataclasses.asdict(policy.cfg), "model": policy.model.state_dict(), "ema": None,
                "tokenizer": policy.tokenizer.proto, "stats": {k: v.tolist() for k, v in (
                    ("qpos_mean", policy.norm.qm), ("qpos_std", policy.norm.qs), ("action_mean", policy.norm.am),
                    ("action_std", policy.norm.as_))}, "meta": policy.meta}, path)
    return str(path)


@contextlib.contextmanager
def serving(policy):
    """interop.server on 127.0.0.1 (a free port) in a thread; yields ws://127.0.0.1:PORT."""
    srv = server.serve(policy, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"ws://127.0.0.1:{srv.socket.getsockname()[1]}"
    finally:
        srv.shutdown()
        t.join(10)


@contextlib.contextmanager
def refused_url():
    """ws://127.0.0.1:PORT where nothing listens: the port is bound, not listening, so connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"ws://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def bimanual():
    return tiny_policy(data.make_meta(["lift_block"], ["top"], [32, 32]), velocity=True)


def obs_of(policy, seed: int, instruction="lift the red block") -> dict:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=len(policy.qpos_names)).astype(np.float32)
    return {"images": {c: rng.integers(0, 256, (*policy.image_size, 3), dtype=np.uint8) for c in policy.cameras},
            "qpos": q, "prev_qpos": q - 0.01, "instruction": instruction}


def in_process(policy, obs: list, seed: int, calls: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [policy.predict_chunk(obs, generator=g) for _ in range(calls)]


# ----------------------------------------------------------------------------- the protocol

def test_metadata_on_connect_then_the_in_process_chunk_and_timings(bimanual):
    bimanual.noise_scale = 1.0
    obs = obs_of(bimanual, 0)
    with serving(bimanual) as url, connect(url, compression=None, max_size=None) as ws:
        md = client.unpackb(ws.recv())                       # the first frame, before any request
        assert md["action_names"] == bimanual.action_names and md["cameras"] == ["top"] and md["velocity"] is True
        assert md["horizon"] == 4 and md["meta"]["tasks"].keys() == {"lift_block"}
        replies = []
        for _ in range(2):                                   # openpi's form: one observation, one (H, A) chunk
            ws.send(client.packb({**obs, "noise_seed": 5}))
            replies.append(client.unpackb(ws.recv()))
        want = in_process(bimanual, [obs], 5)[0][0]
        for r in replies:
            assert r["actions"].dtype == np.float32 and np.array_equal(r["actions"], want)
            timing = r["policy_timing"]["infer_ms"]
            assert timing > 0 and r["server_timing"]["infer_ms"] >= timing
        assert "prev_total_ms" not in replies[0]["server_timing"] and replies[1]["server_timing"]["prev_total_ms"] > 0
    with serving(bimanual) as url:                           # RemotePolicy: a batch, its noise continued across calls
        remote = client.RemotePolicy(url)
        assert (remote.fps, remote.qpos_names, remote.gripper_indices, remote.image_size, remote.n_action_steps) == (
            bimanual.fps, bimanual.qpos_names, bimanual.gripper_indices, tuple(bimanual.image_size), 2)
        batch = [obs, obs_of(bimanual, 1, "pick up the cube")]
        remote.seed_noise(7)
        got = [remote.predict_chunk(batch) for _ in range(2)]
        want = in_process(bimanual, batch, 7, calls=2)
        assert all(np.array_equal(g, w) for g, w in zip(got, want)) and got[0].shape == (2, 4, 14)
        assert not np.array_equal(got[0], got[1])             # the second call draws new noise
        remote.noise_scale = 0.0
        assert np.array_equal(remote.predict_chunk(batch), remote.predict_chunk(batch))  # deterministic at 0
        remote.close()


def test_an_error_is_a_text_frame_with_the_traceback_then_close_1011(bimanual):
    bad = {k: v for k, v in obs_of(bimanual, 0).items() if k != "images"}
    with serving(bimanual) as url:
        with connect(url) as ws:
            ws.recv()
            ws.send(client.packb(bad))
            text = ws.recv()
            assert isinstance(text, str) and "Traceback" in text and "no image for camera(s) ['top']" in text
            with pytest.raises(ConnectionClosedError) as e:
                ws.recv()
            assert e.value.rcvd.code == 1011
        remote = client.RemotePolicy(url)
        with pytest.raises(client.ServerError, match="no image for camera"):
            remote.predict_chunk([bad])
        assert urllib.request.urlopen(url.replace("ws://", "http://") + "/healthz", timeout=10).status == 200


def test_droid_keys_map_onto_a_franka_checkpoint(bimanual):
    franka = tiny_policy(twin.make_meta(["franka_pick_place"], ["front", "wrist"], [32, 32]))
    rng = np.random.default_rng(3)
    ext, wrist = (rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(2))
    droid = {"observation/exterior_image_1_left": ext, "observation/wrist_image_left": wrist,
             "observation/joint_position": np.linspace(-1, 1, 7), "observation/gripper_position": np.array([0.25]),
             "prompt": "pick up the cube"}
    ours = server.from_droid(droid, franka)
    assert ours["images"]["front"] is ext and ours["images"]["wrist"] is wrist
    assert ours["instruction"] == "pick up the cube"
    assert np.allclose(ours["qpos"], [*np.linspace(-1, 1, 7), 0.75]) and ours["qpos"].dtype == np.float32
    with serving(franka) as url, connect(url) as ws:
        ws.recv()
        ws.send(client.packb({**droid, "noise_seed": 1}))
        got = client.unpackb(ws.recv())["actions"]            # (H, 8): joints, then DROID's gripper (1 = closed)
    want = in_process(franka, [ours], 1)[0][0]
    assert got.shape == (4, 8) and np.array_equal(got[:, :7], want[:, :7]) and np.array_equal(got[:, 7], 1 - want[:, 7])
    with pytest.raises(ValueError, match="Franka checkpoint"):
        server.from_droid(droid, bimanual)
    with pytest.raises(KeyError, match="observation/wrist_image_left"):
        server.from_droid({k: v for k, v in droid.items() if "wrist" not in k}, franka)


def test_eval_real_remote_seeds_the_servers_noise_with_its_seed():
    import eval_real
    franka = tiny_policy(twin.make_meta(["franka_pick_place"], ["front", "wrist"], [32, 32]))
    obs = obs_of(franka, 2)
    with serving(franka) as url:
        o = eval_real.parse_options(["--remote", url, "--seed", "3", "--noise-scale", "0.5"])
        remote = eval_real.load_policy(o)
        got = [remote.predict_chunk([obs]) for _ in range(2)]
        remote.close()
    franka.noise_scale = 0.5
    assert all(np.array_equal(g, w) for g, w in zip(got, in_process(franka, [obs], 3, calls=2)))
    with refused_url() as url, pytest.raises(eval_real.RobotError, match="no policy server at"):
        eval_real.load_policy(eval_real.parse_options(["--remote", url]))


# ----------------------------------------------------------------------------- eval_sim.py through the server

def test_eval_sim_through_the_server_gives_the_in_process_outcomes(tmp_path, bimanual):
    ckpt = save_ckpt(bimanual, tmp_path / "ckpt.pt")
    cfg = dict(task=["lift_block"], episodes=2, batch=2, max_steps=8, workers=1)
    local = eval_sim.evaluate(eval_sim.EvalConfig(ckpt=ckpt, out=str(tmp_path / "local"), **cfg))
    with serving(Policy.load(ckpt)) as url:
        remote = eval_sim.evaluate(eval_sim.EvalConfig(remote=url, out=str(tmp_path / "remote"), **cfg))
    drop = lambda eps: [{k: v for k, v in e.items() if k != "latency_ms_per_batched_call"} for e in eps]
    a, b = (drop(r["tasks"]["lift_block"]["per_episode"]) for r in (local, remote))
    assert json.dumps(a) == json.dumps(b)


def test_bad_input_is_one_line_and_the_bench_runs(tmp_path, capsys, bimanual):
    assert server.main([str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"interop/server.py: error: {tmp_path / 'none.pt'}: no such checkpoint file"
    with refused_url() as url, pytest.raises(SystemExit) as e:
        eval_sim.main(["--remote", url, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: no policy server at ws://127.0.0.1:") and "\n" not in err
    ckpt = save_ckpt(bimanual, tmp_path / "ckpt.pt")
    assert server.main([ckpt, "--bench", "2", "--out", str(tmp_path / "b.json")]) == 0  # the benchmark runs
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["chunks"] == 2 and b["remote_p50_ms"] > 0 and b["command"].startswith("python -m interop.server --ckpt")
    assert "remote / in-process: p50" in capsys.readouterr().out
