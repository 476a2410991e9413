"""openpi's wire format and a policy that runs on a server: `RemotePolicy(url)` acts as model.Policy does.

The codec is openpi-client's msgpack_numpy.py (0.1.2), byte for byte: an ndarray travels as the map
{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape}, a numpy scalar as
{b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}; object, void and complex dtypes are refused (no
pickle). So openpi's clients talk to interop/server.py, and this client to any server speaking it.

RemotePolicy connects to interop/server.py, reads the policy's metadata frame (what model.Policy holds: fps,
names, cameras, image size, horizon, the checkpoint's meta), and sends each batch of observations as one
message {"batch": [obs, ...], "noise_scale": s} (a plain observation, openpi's form, gets one chunk (H, A)).
`seed_noise(seed)` makes the next message carry "noise_seed": the server then draws this connection's flow
noise from torch.Generator().manual_seed(seed), as eval_sim.rollout_batch does in process, so a remote
rollout on the same seeds gives the same actions bit for bit (docs/serving.md).

numpy, msgpack and websockets only: eval_sim.py and eval_real.py import it lazily, and a robot PC needs no torch.
"""
from __future__ import annotations

import msgpack
import numpy as np


def pack_array(obj):
    """msgpack's `default`: numpy arrays and scalars as openpi-client encodes them."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"Unsupported dtype: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def unpack_array(obj):
    """msgpack's `object_hook`: the maps pack_array writes back to numpy (arrays are read-only views)."""
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=pack_array)


def unpackb(data: bytes):
    return msgpack.unpackb(data, object_hook=unpack_array)


class ServerError(RuntimeError):
    """The server failed on a request; the message holds its traceback (openpi: a text frame, then close 1011)."""


class RemotePolicy:
    """model.Policy's interface (predict_chunk, select_action, reset and the attributes evaluation reads) for a
    policy served by interop/server.py at `url` (ws://host:port)."""

    def __init__(self, url: str, seed: int | None = None, open_timeout: float = 10.0, timeout: float | None = 60.0):
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect
        self.url = url
        try:
            self._ws = connect(url, compression=None, max_size=None, open_timeout=open_timeout, legacy=True)
        except (OSError, TimeoutError, InvalidURI, InvalidHandshake) as e:
            raise ConnectionError(f"no policy server at {url} ({type(e).__name__}: {e}); start one with "
                                  f"`python -m interop.server CKPT --port PORT`") from None
        self.timeout = timeout  # s to wait for a reply (TimeoutError after it); None: forever
        md = unpackb(self._ws.recv(timeout=timeout))
        if not isinstance(md, dict) or "action_names" not in md:
            self._ws.close()
            raise ConnectionError(f"{url} is not a stake-vla policy server (its metadata has no action_names)")
        self.metadata = md
        self.meta = md["meta"]
        self.server_device = md["device"]  # where the server runs the model (no `device`: nothing here is torch)
        self.fps = float(md["fps"])
        self.action_names, self.qpos_names = list(md["action_names"]), list(md["qpos_names"])
        self.gripper_indices = [int(i) for i in md["gripper_indices"]]
        self.cameras, self.image_size = list(md["cameras"]), tuple(md["image_size"])
        self.horizon, self.n_action_steps = int(md["horizon"]), int(md["n_action_steps"])
        self.velocity = bool(md["velocity"])
        self.noise_scale = 1.0  # sent with every request (model.Policy.noise_scale)
        self._seed = seed       # sent with the next request: the server reseeds this connection's noise
        self._queue: list[np.ndarray] = []
        self.last_timing: dict = {}

    def seed_noise(self, seed: int) -> None:
        """From the next request on, the server draws this connection's noise from Generator().manual_seed(seed)
        (eval_sim.rollout_batch calls it with the batch's first seed, as it seeds the in-process generator)."""
        self._seed = int(seed)

    def reset(self) -> None:
        self._queue = []

    def predict_chunk(self, obs_batch: list[dict], generator=None) -> np.ndarray:
        """(B, horizon, A) absolute joint targets, from the server. Only the keys the policy reads are sent."""
        if generator is not None:
            raise TypeError("RemotePolicy draws its noise on the server: seed it with seed_noise(seed)")
        keep = lambda o: {"images": {c: o["images"][c] for c in self.cameras if c in o.get("images", {})},
                          **{k: o[k] for k in ("qpos", "prev_qpos", "instruction") if k in o}}
        msg = {"batch": [keep(o) for o in obs_batch], "noise_scale": float(self.noise_scale)}
        if self._seed is not None:
            msg["noise_seed"], self._seed = self._seed, None
        self._ws.send(packb(msg))
        reply = self._ws.recv(timeout=self.timeout)
        if isinstance(reply, str):
            raise ServerError(f"the policy server at {self.url} failed:\n{reply}")
        out = unpackb(reply)
        self.last_timing = {"policy": out.get("policy_timing", {}), "server": out.get("server_timing", {})}
        return np.array(out["actions"])  # (B, H, A), writable

    def select_action(self, obs: dict) -> np.ndarray:
        """Execute `n_action_steps` of each chunk open loop, then query again (as model.Policy)."""
        if not self._queue:
            self._queue = list(self.predict_chunk([obs])[0, :self.n_action_steps])
        return self._queue.pop(0).astype(np.float32)

    def close(self) -> None:
        self._ws.close()
