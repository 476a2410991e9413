"""The training data in memory: episode folders -> tensors with StaKe labels -> batches (train.py's input).

data.py writes and reads single episodes; this module loads whole folders for training: every step of every
episode flattened, with its stage label and keyframe target from segment.py, the normalisation statistics,
the batches with their augmentations (random shift, the scene's symmetry), and the cache of a frozen front
end's output that lets the recipe train without running its ViT.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import data
import segment
from model import VISION_PREFIXES, VLA, ModelConfig, Normalizer, images_to_input

STD_FLOOR = 1e-2  # normalisation: floor on a dimension's std (signal units; see compute_stats)


def load_folders(folders, cameras=None, stage_label="per-arm", images=True):
    """All episodes of all folders in memory, flattened over steps, with StaKe labels per step (images=False:
    without the images, for a run whose front end's output is cached). Raises data.DataError before any
    training on empty or mixed-format folders."""
    if not folders:
        raise data.DataError("--data: give at least one episode folder")
    metas = [data.load_meta(f) for f in folders]
    ref = metas[0]
    for f, m in zip(folders, metas):
        for key in ("action_names", "qpos_names", "gripper_indices", "fps", "image_size", "gripper_convention",
                    "segment"):
            if m.get(key) != ref.get(key):
                raise data.DataError(f"{f}/meta.json: '{key}' = {m.get(key)} differs from {folders[0]}: {ref.get(key)} "
                                     f"(mixed formats cannot train one policy)")
        if not data.episode_paths(f):
            raise data.DataError(f"{f}: no episode_*.npz files")
    A, Dq, gi = len(ref["action_names"]), len(ref["qpos_names"]), [int(i) for i in ref["gripper_indices"]]
    if any(not 0 <= i < Dq for i in gi):
        raise data.DataError(f"{folders[0]}/meta.json: 'gripper_indices' {gi} must also index qpos ({Dq} dims)")
    cams = list(cameras) if cameras else list(ref["cameras"])
    for f, m in zip(folders, metas):
        if missing := [c for c in cams if c not in m["cameras"]]:
            raise data.DataError(f"{f}/meta.json: no camera(s) {missing} (has {m['cameras']})")
    try:  # which gripper channel, levels and thresholds: meta's "segment" (an import's), else 0/1 commands
        signal, seg_kw = segment.settings(ref)
        segment.segment(np.zeros((1, len(gi))), **seg_kw)  # bad settings fail here, naming the setting
    except ValueError as e:
        raise data.DataError(f"{folders[0]}/meta.json: {e}") from None
    H, W = ref["image_size"]
    imgs, qpos, act, stage, key, ep_id, ends, texts, ep_tasks, seeds, pos = ([] for _ in range(11))
    tasks, roles, why = {}, None, ""  # the simulator's object positions, where every episode has them
    n = 0
    for f, m in zip(folders, metas):
        tasks.update(m["tasks"])
        for p in data.episode_paths(f):
            ep = data.load_episode(p)
            T = len(ep["action"])
            if ep["action"].shape[1] != A or ep["qpos"].shape[1] != Dq:
                raise data.DataError(f"{p}: action/qpos have {ep['action'].shape[1]}/{ep['qpos'].shape[1]} dims, "
                                     f"meta.json names {A}/{Dq}")
            for c in cams:
                if c not in ep["images"] or ep["images"][c].shape[1:3] != (H, W):
                    raise data.DataError(f"{p}: needs images/{c} of size {H}x{W} (meta.json image_size)")
            seg = segment.segment(ep[signal][:, gi], **seg_kw)
            s = seg.stage.astype(np.float32)                                  # (T, G) 1 = closed = skill
            stage.append(s.max(1, keepdims=True) if stage_label == "any" else s)
            key.append(segment.keyframe_targets(ep["action"], seg).astype(np.float32))  # (T, A)
            if images:
                imgs.append(np.stack([ep["images"][c] for c in cams], 1))     # (T, C, H, W, 3)
            qpos.append(ep["qpos"]), act.append(ep["action"])
            ep_id.append(np.full(T, len(texts))), texts.append(ep["instruction"]), ep_tasks.append(ep["task"])
            seeds.append(int(ep["seed"]) if "seed" in ep else None)
            if "positions" not in ep:
                why = why or f"{p} holds no simulator positions (data.py generate records them)"
            elif roles not in (None, ep["position_roles"]):
                why = why or f"{p} locates {ep['position_roles']}, an earlier episode {roles}"
            else:
                roles = ep["position_roles"]
                pos.append(ep["positions"])
            ends.append(np.full(T, n + T - 1))
            n += T
    t = lambda xs, dt=None: torch.from_numpy(np.concatenate(xs)) if dt is None else torch.from_numpy(np.concatenate(xs).astype(dt))
    return dict(images=t(imgs) if images else None, qpos=t(qpos), action=t(act), stage=t(stage), keyframe=t(key),
                ep_id=t(ep_id, np.int64), end=t(ends, np.int64), texts=texts,
                ep_tasks=ep_tasks, ep_seeds=seeds, cameras=cams,
                positions=None if why else t(pos), position_roles=roles, positions_why=why,  # (N, 2R) metres
                meta=dict(fps=ref["fps"], robot=ref.get("robot", ""), action_names=ref["action_names"],
                          qpos_names=ref["qpos_names"], gripper_indices=gi, gripper_convention=ref["gripper_convention"],
                          arms=ref.get("arms", []), cameras=cams, image_size=[H, W], tasks=tasks,
                          stage_label=stage_label, data=[str(f) for f in folders]))


def previous_qpos(D) -> torch.Tensor:
    """--velocity: each row's qpos one control step earlier in its episode (an episode's first row: its own)."""
    i = torch.arange(len(D["qpos"]))
    first = (i == 0) | (D["ep_id"] != D["ep_id"].roll(1))
    return D["qpos"][torch.where(first, i, i - 1)]                                    # (N, Dq)


def with_velocity(qpos, qpos_prev):
    """--velocity: the state is the joints and their change over the last control step."""
    return qpos if qpos_prev is None else torch.cat([qpos, qpos - qpos_prev], -1)  # (..., 2 Dq)


def compute_stats(D) -> dict:
    """z-score statistics per dimension, std floored at STD_FLOOR. The flow's noise is N(0, I), so unit-variance
    targets match it (quantiles, pi0.5, are noisy with a few dozen demonstrations); without the floor a joint
    that never moves (std 0) would map any later deviation to enormous values. Keyframe targets use the action
    statistics, so the keyframe L1 is in action standard deviations."""
    s = lambda x: x.std(0, unbiased=False).clamp(min=STD_FLOOR).tolist()
    q = with_velocity(D["qpos"], D.get("qpos_prev"))
    return dict(qpos_mean=q.mean(0).tolist(), qpos_std=s(q),
                action_mean=D["action"].mean(0).tolist(), action_std=s(D["action"]), std_floor=STD_FLOOR)


def random_shift(x, shifts, pad: int):
    """x (B, C, 3, H, W) float; shifts (B, C, 2) in [0, 2 pad]: replicate-pad and crop back (DrQ style)."""
    B, C, _, H, W = x.shape
    x = F.pad(x.flatten(0, 1), (pad,) * 4, mode="replicate").permute(0, 2, 3, 1)   # (B*C, H+2p, W+2p, 3)
    s = shifts.flatten(0, 1).to(x.device)
    rows = s[:, :1] + torch.arange(H, device=x.device)                             # (B*C, H)
    cols = s[:, 1:] + torch.arange(W, device=x.device)                             # (B*C, W)
    n = torch.arange(B * C, device=x.device)[:, None, None]
    return x[n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).unflatten(0, (B, C))


def make_batch(D, lang, norm: Normalizer, g: torch.Generator, B: int, cfg: ModelConfig, shift: int, device,
               scene=None):
    """Sample B steps uniformly over all episodes (generator g only); chunks running past an episode's end
    repeat its last action and are masked. Images are augmented and normalised on the device.
    With `scene` (scene_augmentation's tensors, on the device: --symmetry) half the samples, drawn last, are
    moved as a demonstration of the mirrored layout would be; `ground_matrix` (B, 2, 2) and `ground_offset`
    (B, 2) tell the model how the objects' world (x, y) moved alike: (x, y) -> M (x, y) + t."""
    N = len(D["action"])
    idx = torch.randint(0, N, (B,), generator=g)                                   # (B,)
    end = D["end"][idx][:, None]
    cidx = idx[:, None] + torch.arange(cfg.horizon)                                # (B, H)
    valid, cidx = cidx <= end, torch.minimum(cidx, end)
    shifts = torch.randint(0, 2 * shift + 1, (B, D["images"].shape[1], 2), generator=g) if shift else None
    to = lambda x: x.to(device, non_blocking=True)
    if "ground" in D:  # the frozen front end's output for these frames, cached: no image is read
        seen = dict(ground=to(D["ground"][idx]))                                   # (B, 2R)
    else:
        seen = dict(images=images_to_input(to(D["images"][idx]), cfg.image_size))  # (B, C, 3, H, W)
        if shift:
            seen["images"] = random_shift(seen["images"], shifts, shift)
    qpos, actions, keyframe, stage = (to(D[k][i]) for k, i in (("qpos", idx), ("action", cidx),
                                                               ("keyframe", idx), ("stage", idx)))
    qprev = to(D["qpos_prev"][idx]) if "qpos_prev" in D else None  # --velocity: moved below as qpos is
    out = {}
    if scene is not None:  # --symmetry, on joints and positions alike
        S = scene
        flip = to(torch.rand(B, generator=g) < 0.5)                                # (B,)
        move = lambda x: x[..., S["index"]] * S["sign"] + S["offset"]
        qpos = torch.where(flip[:, None], move(qpos), qpos)
        qprev = None if qprev is None else torch.where(flip[:, None], move(qprev), qprev)
        actions = torch.where(flip[:, None, None], move(actions), actions)
        keyframe = torch.where(flip[:, None], move(keyframe), keyframe)
        if stage.shape[1] == len(S["stage_index"]):  # per gripper; "any" (one column over two arms) stays
            stage = torch.where(flip[:, None], stage[:, S["stage_index"]], stage)
        xy = torch.where(flip[:, None], S["xy_sign"], torch.ones_like(S["xy_sign"]))  # (B, 2)
        out["ground_matrix"] = xy[..., None] * torch.eye(2, device=device).expand(B, 2, 2)
        out["ground_offset"] = torch.zeros(B, 2, device=device)
    e = D["ep_id"][idx]
    if lang[0].dim() == 3:  # train.py --phrasings grammar: (E, N, L), one of its episode's N phrasings per sample
        e = (e, torch.randint(0, lang[0].shape[1], (B,), generator=g))
    return dict(**seen, lang_ids=to(lang[0][e]), lang_mask=to(lang[1][e]),
                state=norm.state(with_velocity(qpos, qprev)), actions=norm.action(actions), action_valid=to(valid),
                stage=stage, keyframe=norm.action(keyframe), gripper_qpos=qpos[:, D["meta"]["gripper_indices"]], **out)


def scene_augmentation(meta: dict) -> dict:
    """--symmetry: the SYMMETRY of the suite (sim.py, twin.py) whose robot recorded this data, as tensors for
    make_batch. Raises data.DataError where the data's robot or joint layout is not a suite's."""
    import world  # here: training without it needs no MuJoCo
    suite = world.suite_of_robot(meta.get("robot"))
    if suite is None or not meta["action_names"] == meta["qpos_names"] == suite.ACTION_NAMES:
        raise data.DataError(f"--symmetry needs the joint layout of a simulated robot "
                             f"({', '.join(s.ROBOT for s in world.SUITES)}); the data has robot "
                             f"'{meta.get('robot')}', actions {meta['action_names']}, qpos {meta['qpos_names']}")
    S, gi = suite.SYMMETRY, list(meta["gripper_indices"])
    f = lambda x: torch.tensor(x, dtype=torch.float32)
    return dict(index=torch.tensor(S["joint_index"]), sign=f(S["joint_sign"]), offset=f(S["joint_offset"]),
                stage_index=torch.tensor([gi.index(S["joint_index"][i]) for i in gi]),  # gripper g <- its image
                xy_sign=f(S["xy_sign"]))


@torch.no_grad()
def grounded_positions(model: VLA, D, folders, lang, device, batch: int = 256) -> torch.Tensor:
    """(N, 2R) the frozen front end's normalised object positions for every frame of `folders`, in
    load_folders' order: what encode_prefix computes from the unshifted images, so a run with a frozen front
    end, --grounded-only and --shift 0 trains without the ViT. Cached per folder as FOLDER/grounded_KEY.npy,
    KEY a hash of the front end's weights, the cameras and every episode file's bytes: another front end or
    other data never reuses it."""
    h = hashlib.sha256(",".join(D["cameras"]).encode())
    for k, v in sorted(model.state_dict().items()):
        if k.startswith(VISION_PREFIXES):
            h.update(k.encode() + v.detach().float().cpu().numpy().tobytes())
    out, e = [], 0  # e: the episode index in D (its instruction's tokens)
    for f in folders:
        paths, hf = data.episode_paths(f), h.copy()
        for p in paths:
            hf.update(p.name.encode() + p.read_bytes())
        cache = Path(f) / f"grounded_{hf.hexdigest()[:16]}.npy"
        if cache.is_file():
            out.append(torch.from_numpy(np.load(cache)))
            e += len(paths)
            continue
        rows = []
        for p in paths:
            imgs = torch.from_numpy(np.stack([data.load_episode(p)["images"][c] for c in D["cameras"]], 1))  # (T, C, H, W, 3)
            for i in range(0, len(imgs), batch):
                x = images_to_input(imgs[i:i + batch].to(device), model.cfg.image_size)  # (b, C, 3, H, W)
                ids, mask = (t[e:e + 1].expand(len(x), -1).to(device) for t in lang)
                xy = model.encode_keypoints(x, model.embed_instruction(ids), mask).flatten(1)  # (b, C*K*2)
                rows.append(model.ground_head(xy).float().cpu())                          # (b, 2R)
            e += 1
        pos = torch.cat(rows)
        data.atomic_write_bytes(cache, lambda fh: np.save(fh, pos.numpy()))
        out.append(pos)
    return torch.cat(out)
