"""A policy server that openpi's clients can talk to: a checkpoint's model.Policy over websockets.

  python -m interop.server RUN/ckpt.pt --port 8000                 # serve (ws://0.0.0.0:8000, GET /healthz)
  python -m interop.server RUN/ckpt.pt --bench 100                 # latency per chunk: loopback vs in process
  python eval_sim.py --remote ws://GPU-BOX:8000 --task lift_block   # evaluate through it (eval_real.py too)

The protocol is openpi's (scripts/serve_policy.py, serving/websocket_policy_server.py): on connect the server
sends one binary msgpack frame, the policy's metadata; then per observation it answers {"actions": (H, A),
"policy_timing": {"infer_ms"}, "server_timing": {"infer_ms", "prev_total_ms"}}; an exception goes back as a
text frame with the traceback and the connection closes with code 1011. Compression off, no size limit.
Messages are packed with interop/client.py's codec (openpi-client's msgpack_numpy).

Observations, in one of two forms:
  ours    {"images": {camera: (H, W, 3) uint8}, "qpos": (Dq,), "prev_qpos": (Dq,) (--velocity checkpoints),
           "instruction": str}: what sim.Env and eval_real.py give; the actions are model.Policy's.
  DROID   {"observation/exterior_image_1_left", "observation/wrist_image_left": (H, W, 3) uint8,
           "observation/joint_position": (7,), "observation/gripper_position": (1,), "prompt": str}: for a
           Franka checkpoint (twin or real arm; 7 joints + gripper). See DROID below for the mapping.
Extensions (all optional): {"batch": [obs, ...]} answers (B, H, A) from one batched call; "noise_scale" (the
flow's starting noise times this, default --noise-scale); "noise_seed": this connection's noise is drawn from
then on from torch.Generator().manual_seed(seed) (without one: the server's global torch RNG, seeded --seed).
"""
from __future__ import annotations

import http
import json
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import data
from data import opt
from interop.client import RemotePolicy, packb, unpackb

# DROID's observation keys -> a Franka checkpoint's cameras (world/twin.py CAMERAS; eval_real.py reads the same
# two). DROID's exterior camera 1 is the scene camera ("front"), its wrist camera ours ("wrist").
DROID_CAMERAS = {"observation/exterior_image_1_left": "front", "observation/wrist_image_left": "wrist"}


@dataclass
class Options:
    ckpt: str = opt("", "checkpoint to serve (train.py RUN/ckpt.pt); also the first argument")
    host: str = opt("0.0.0.0", "address to listen on (127.0.0.1: this machine only)")
    port: int = opt(8000, "port (openpi's default; 0: any free one, printed)")
    device: str = opt("cpu", "torch device for the policy")
    noise_scale: float = opt(1.0, "the flow's starting noise times this, for requests that send no noise_scale")
    seed: int = opt(0, "the global torch seed: the noise of requests on connections that sent no noise_seed")
    bench: int = opt(0, "time this many chunks in process and through the server on loopback, print p50 / p99, "
                        "and exit (0: serve)")
    out: str = opt("", "with --bench: also write its figures, the command and the git revision to this JSON file")

    def __post_init__(self):
        if not 0.0 <= self.noise_scale <= 1.0:
            raise ValueError(f"--noise-scale {self.noise_scale}: must be in [0, 1]")
        if not 0 <= self.port < 65536 or self.bench < 0:
            raise ValueError("--port must be in [0, 65535] and --bench >= 0")


def metadata(policy) -> dict:
    """The frame sent on connect: what RemotePolicy needs to act as the Policy, and the checkpoint's meta."""
    return {"policy": "stake-vla", "device": str(policy.device), "fps": policy.fps, "action_names": policy.action_names,
            "qpos_names": policy.qpos_names, "gripper_indices": policy.gripper_indices, "cameras": policy.cameras,
            "image_size": list(policy.image_size), "horizon": policy.horizon, "n_action_steps": policy.n_action_steps,
            "velocity": policy.velocity, "meta": policy.meta,
            "droid": {"cameras": DROID_CAMERAS, "gripper": "1 - gripper_position (DROID: 1 = closed)",
                      "actions": "absolute joint positions (rad) + gripper position, 1 = closed"}}


def is_droid(obs: dict) -> bool:
    return any(k.startswith("observation/") for k in obs)


def from_droid(obs: dict, policy) -> dict:
    """A DROID observation as the Franka checkpoint's: qpos = 7 joints + opening (1 - DROID's gripper position,
    which is 1 when closed; ours is width / 0.08, 1 when open). DROID sends no earlier state, so a --velocity
    checkpoint sees zero joint velocity (prev_qpos = qpos)."""
    if len(policy.qpos_names) != 8 or list(policy.gripper_indices) != [7]:
        raise ValueError(f"DROID observations need a Franka checkpoint (7 joints + gripper at index 7); this one has "
                         f"qpos {policy.qpos_names}")
    missing = [k for k, c in DROID_CAMERAS.items() if c in policy.cameras and k not in obs]
    missing += [k for k in ("observation/joint_position", "observation/gripper_position") if k not in obs]
    if missing:
        raise KeyError(f"DROID observation without {missing}")
    joints = np.asarray(obs["observation/joint_position"], np.float32).reshape(7)
    opening = 1.0 - np.asarray(obs["observation/gripper_position"], np.float32).reshape(1)
    qpos = np.concatenate([joints, opening])                                      # (8,)
    images = {c: np.asarray(obs[k]) for k, c in DROID_CAMERAS.items() if c in policy.cameras}
    return {"images": images, "qpos": qpos, "prev_qpos": qpos, "instruction": str(obs.get("prompt", ""))}


def infer(policy, msg: dict, conn: dict, default_noise_scale: float) -> dict:
    """One request -> the reply's actions and policy timing. `conn` holds this connection's noise generator."""
    import torch
    if "noise_seed" in msg:
        conn["generator"] = torch.Generator().manual_seed(int(msg["noise_seed"]))
    batch = msg["batch"] if "batch" in msg else [msg]
    droid = [is_droid(o) for o in batch]
    obs = [from_droid(o, policy) if d else o for o, d in zip(batch, droid)]
    policy.noise_scale = float(msg.get("noise_scale", default_noise_scale))
    t0 = time.monotonic()
    actions = policy.predict_chunk(obs, generator=conn.get("generator"))          # (B, H, A)
    infer_ms = 1000 * (time.monotonic() - t0)
    for i, d in enumerate(droid):  # DROID's gripper convention: 1 = closed
        if d:
            actions[i, :, 7] = 1.0 - actions[i, :, 7]
    return {"actions": actions if "batch" in msg else actions[0], "policy_timing": {"infer_ms": infer_ms}}


def serve(policy, host: str = "0.0.0.0", port: int = 8000, noise_scale: float = 1.0, log=None):
    """A websockets server (not yet serving: call .serve_forever(), .shutdown()); .socket gives the port.
    One thread per connection; inference is serialised (one model)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.frames import CloseCode
    from websockets.sync.server import serve as ws_serve
    lock, md = threading.Lock(), packb(metadata(policy))

    def handler(ws):
        if log:
            log(f"connection from {ws.remote_address}")
        ws.send(md)
        conn, prev_total = {}, None
        while True:
            try:
                start = time.monotonic()
                msg = unpackb(ws.recv())
                t0 = time.monotonic()
                with lock:
                    out = infer(policy, msg, conn, noise_scale)
                out["server_timing"] = {"infer_ms": 1000 * (time.monotonic() - t0)}
                if prev_total is not None:
                    out["server_timing"]["prev_total_ms"] = 1000 * prev_total
                ws.send(packb(out))
                prev_total = time.monotonic() - start
            except ConnectionClosed:
                return
            except Exception:
                tb = traceback.format_exc()
                if log:
                    log(tb)
                ws.send(tb)
                ws.close(CloseCode.INTERNAL_ERROR, "Internal server error. Traceback included in previous frame.")
                return

    def healthz(ws, request):
        if request.path == "/healthz":
            return ws.respond(http.HTTPStatus.OK, "OK\n")
        return None

    return ws_serve(handler, host, port, process_request=healthz, compression=None, max_size=None)


def bench(policy, n: int, log=print) -> dict:
    """Per-chunk latency of predict_chunk in process and through the server on loopback (a thread of this
    process), interleaved so that both see the same load; one observation of random images per call."""
    rng = np.random.default_rng(0)
    q = np.zeros(len(policy.qpos_names), np.float32)
    obs = {"images": {c: rng.integers(0, 256, (*policy.image_size, 3), dtype=np.uint8) for c in policy.cameras},
           "qpos": q, "prev_qpos": q, "instruction": "pick up the block"}
    server = serve(policy, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    remote = RemotePolicy(f"ws://127.0.0.1:{server.socket.getsockname()[1]}")
    local_ms, remote_ms = [], []
    try:
        for i in range(n + 3):                                                    # 3 warm-up calls each
            t0 = time.perf_counter()
            policy.predict_chunk([obs])
            t1 = time.perf_counter()
            remote.predict_chunk([obs])
            t2 = time.perf_counter()
            if i >= 3:
                local_ms.append(1000 * (t1 - t0))
                remote_ms.append(1000 * (t2 - t1))
    finally:
        remote.close()
        server.shutdown()
    p = lambda x, q: float(np.percentile(x, q))
    r = {"chunks": n, "device": str(policy.device), "request_bytes": len(packb({"batch": [obs]})),
         "in_process_p50_ms": p(local_ms, 50), "in_process_p99_ms": p(local_ms, 99),
         "remote_p50_ms": p(remote_ms, 50), "remote_p99_ms": p(remote_ms, 99)}
    log(f"{n} chunks (batch 1, {len(policy.cameras)} camera(s) {tuple(policy.image_size)}, device {r['device']}, "
        f"request {r['request_bytes'] / 1000:.1f} kB):")
    for name in ("in_process", "remote"):
        log(f"  {name.replace('_', '-'):11s} p50 {r[name + '_p50_ms']:7.2f} ms   p99 {r[name + '_p99_ms']:7.2f} ms")
    log(f"  remote / in-process: p50 {r['remote_p50_ms'] / r['in_process_p50_ms']:.2f}x, "
        f"p99 {r['remote_p99_ms'] / r['in_process_p99_ms']:.2f}x")
    return r


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # the checkpoint as the first argument
        argv = ["--ckpt", argv[0], *argv[1:]]
    try:
        o = data.parse_options(Options, argv, "python -m interop.server", __doc__.split("\n")[0])
        import torch
        from model import Policy
        if not o.ckpt:
            raise ValueError("give the checkpoint to serve: python -m interop.server RUN/ckpt.pt")
        try:
            policy = Policy.load(o.ckpt, device=o.device)
        except FileNotFoundError:
            raise ValueError(f"{o.ckpt}: no such checkpoint file") from None
        torch.manual_seed(o.seed)
        if o.bench:
            r = bench(policy, o.bench) | {"ckpt": o.ckpt, "threads": torch.get_num_threads(),
                                          "command": "python -m interop.server " + " ".join(argv), "git": data.git_revision()}
            if o.out:
                Path(o.out).parent.mkdir(parents=True, exist_ok=True)
                data.atomic_write_bytes(Path(o.out), lambda f: f.write((json.dumps(r, indent=1) + "\n").encode()))
            return 0
        server = serve(policy, o.host, o.port, o.noise_scale, log=lambda s: print(s, file=sys.stderr))
        print(f"serving {o.ckpt} on ws://{o.host}:{server.socket.getsockname()[1]} (GET /healthz; Ctrl-C stops)",
              file=sys.stderr)
        server.serve_forever()
    except ValueError as e:
        print(f"interop/server.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
