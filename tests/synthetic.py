"""Small fake episode folders in the real format (data.save_episode / data.save_meta), for tests and the
benchmark. Each arm reaches (open), grasps (closed) and releases (open), so segment.py finds events; the
image is a dark square whose position follows the left arm's first joint, so vision carries the state."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402


def make_episode(T: int, action_dim: int, gripper_indices, cameras, image_size, rng, instruction, task, seed):
    t = np.linspace(0, 1, T, dtype=np.float32)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (1, action_dim)).astype(np.float32)
    action = 0.5 * np.sin(2 * np.pi * t + phase).astype(np.float32)          # (T, A) smooth joints
    action[:, action_dim - 2 if action_dim > 8 else 0] = 0.0                  # one joint never moves
    for k, g in enumerate(gripper_indices):                                   # open -> closed -> open
        close, open_ = int(T * (0.3 + 0.1 * k)), int(T * (0.7 + 0.05 * k))
        action[:, g] = 1.0
        action[close:open_, g] = 0.0
    qpos = np.concatenate([action[:1], action[:-1]]).copy()                   # lags the command by a step
    qpos[:, gripper_indices] = np.maximum(qpos[:, gripper_indices], 0.5)      # a grasp stops on the object
    H, W = image_size
    images = {}
    for c, cam in enumerate(cameras):
        img = np.full((T, H, W, 3), 200 - 30 * c, np.uint8)
        cy = ((0.5 + 0.4 * action[:, 0]) * (H - 8)).astype(int)
        cx = ((0.5 + 0.4 * action[:, 1 % action_dim]) * (W - 8)).astype(int)
        for i in range(T):
            img[i, cy[i]:cy[i] + 8, cx[i]:cx[i] + 8] = (20, 40 + 60 * c, 200 * int(action[i, gripper_indices[0]] > 0.5))
        images[cam] = img
    return dict(images=images, qpos=qpos, action=action, instruction=instruction, task=task, seed=seed)


def make_dataset(folder, n_episodes: int = 3, T: int = 30, action_dim: int = 14, gripper_indices=(6, 13),
                 cameras=("top",), image_size=(32, 32), seed: int = 0, task: str = "synthetic_lift",
                 instruction: str = "pick up the block", meta_overrides: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"j{i}" for i in range(action_dim)]
    for g in gripper_indices:
        names[g] = f"gripper{g}"
    meta = dict(fps=20, action_names=names, qpos_names=list(names), gripper_indices=list(gripper_indices),
                gripper_convention="1 = open, 0 = closed", arms=[f"arm{k}" for k in range(len(gripper_indices))],
                cameras=list(cameras), image_size=list(image_size),
                tasks={task: {"gripper_events": 2 * len(gripper_indices), "arms": ["left", "right"], "max_steps": T}})
    meta.update(meta_overrides or {})
    data.save_meta(folder, meta)
    for e in range(n_episodes):
        ep = make_episode(T, action_dim, list(gripper_indices), cameras, image_size, rng, instruction, task, seed + e)
        data.save_episode(folder / f"episode_{e:06d}.npz", ep)
    return folder
