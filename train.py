"""Train the VLA: flow matching on action chunks, plus the optional StaKe stage and keyframe losses.

    python train.py --data DIR [DIR ...] --out RUN --steps N --preset tiny|small|base --seed S \
        --stage-weight W --keyframe-weight W [--stage-label per-arm|any] [--init-from CKPT] [--resume]
        [--vision-from GROUNDING_CKPT --freeze-vision]
    python train.py bench [--presets tiny small base] [--json results/bench_train_cpu.json]

Several folders train one multi-task, language-conditioned policy. `--init-from` fine-tunes an earlier
checkpoint (the paper's setting): its weights (the EMA copy), tokenizer and normalisation statistics are
reused, StaKe heads that the new run enables but the checkpoint lacks start fresh. `--resume` continues
RUN/ckpt.pt exactly (weights, EMA, optimiser, step and both random generators are in the checkpoint).
`--vision-from` starts a fresh policy whose vision-language front end (ViT, keypoint detectors, word embeddings)
and tokenizer come from a ground.py checkpoint; `--freeze-vision` keeps them fixed.

Normalisation: z-score per dimension, std floored at --std-floor (1e-2, in the signal's own units). The
flow's noise is N(0, I), so unit-variance targets match it; quantiles (pi0.5) are noisy with a few dozen
demonstrations and saturate outliers. Without the floor a joint that never moves (std 0) would map any
later deviation to enormous values; with it a constant joint maps to 0 and 0.01 rad to 1.
Keyframe targets use the action statistics, so the keyframe L1 is in action standard deviations.

Randomness: the data order and augmentation come from one generator seeded by --seed alone, the flow's
noise and times from a second; neither depends on the StaKe weights, and the StaKe parameters come from
their own generator (model.py), so the four variants of a seed see the same batches from the same base
initialisation.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import data
import segment
from model import (PRESETS, VISION_PREFIXES, VLA, ModelConfig, Normalizer, Policy, Tokenizer, format_counts,
                   images_to_input, param_counts, train_tokenizer)


def opt(default, help):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Options:
    data: list = opt([], "episode folders (meta.json + episode_*.npz); several = one multi-task policy")
    out: str = opt("runs/debug", "run folder: ckpt.pt, metrics.jsonl, loss.png")
    steps: int = opt(20000, "optimiser steps")
    preset: str = opt("small", f"model size: {', '.join(PRESETS)} (ignored with --init-from/--resume)")
    seed: int = opt(0, "seeds weights, data order, augmentation and flow noise")
    stage_weight: float = opt(0.1, "StaKe: weight of the stage BCE loss; 0 = no stage head at all")
    keyframe_weight: float = opt(0.1, "StaKe: weight of the keyframe L1 loss; 0 = no keyframe head at all")
    stage_label: str = opt("per-arm", "StaKe: 'per-arm' (one label per gripper) or 'any' (skill if any closed)")
    init_from: str = opt("", "fine-tune from this checkpoint (weights, tokenizer and normalisation reused)")
    resume: bool = opt(False, "continue OUT/ckpt.pt if it exists (same options required)")
    cameras: list = opt([], "train on these cameras only (default: all of the first folder's)")
    no_state: bool = opt(False, "leave the joint state out of the input (images + language only): with it, "
                         "a policy can fit most steps by continuing the motion and never learn to look "
                         "(ignored with --init-from/--resume: the checkpoint's model config is kept)")
    patch_size: int = opt(0, "override the preset's ViT patch size (0 = the preset's; must divide the image size)")
    vit_stem: str = opt("patch", "ViT stem: 'patch' (timm's patchify conv) or 'conv' (3x3 convs, model.conv_stem); "
                          "ignored with --init-from/--resume, like --no-state")
    image_pos: bool = opt(False, "add fixed 2-D sin-cos positions to the image tokens entering the backbone "
                          "(model.ModelConfig.image_pos; ignored with --init-from/--resume)")
    vit_pos: str = opt("learned", "the ViT's position embedding: 'learned' (timm) or 'sincos' (fixed 2-D sin-cos, "
                       "not trained; ignored with --init-from/--resume)")
    keypoints: int = opt(0, "K > 0: each camera enters the prefix as K spatial-softmax keypoint tokens (expected "
                         "(x, y) over the patch grid) instead of its patch tokens (model.ModelConfig.keypoints; "
                         "ignored with --init-from/--resume)")
    vision_from: str = opt("", "a ground.py checkpoint: its model config, tokenizer and vision-language weights "
                           "(model.VISION_PREFIXES) start this run; the other weights start fresh. Its config "
                           "wins over --preset/--vit-stem/--vit-pos/--keypoints/--patch-size")
    freeze_vision: bool = opt(False, "keep the weights loaded by --vision-from fixed (no gradient, no decay)")
    grounded: bool = opt(False, "with --vision-from: also load its head (keypoints -> the named objects' (x, y)) "
                         "and give those positions to the policy (model.ModelConfig.grounded)")
    grounded_only: bool = opt(False, "with --grounded: the policy sees only those positions (one token), not the "
                              "keypoints they are read from")
    symmetry: bool = opt(False, "with --grounded-only: half the samples see the scene under its symmetry "
                         "(sim.SYMMETRY: the bimanual table turned half a turn, arms exchanged; twin.SYMMETRY: the "
                         "Franka scene mirrored in y, joints 1, 3, 5, 7 reflected), objects' positions and joints "
                         "alike; a demonstration of a layout the data does not hold (tests check both symmetries)")
    waist_turn: float = opt(0.0, "with --grounded-only: turn each sample whose episode has one acting arm by an "
                            "angle drawn from [-this, this] rad about that arm's waist axis: its waist joint and "
                            "the objects' positions (about its base) alike (the suite's WAISTS); 0 = off")
    action_space: str = opt("joint", "what the policy predicts: 'joint' (joint targets, pi0) or 'ee' (each arm's tcp "
                            "position, two rotation columns and gripper; the Policy turns chunks into joint targets "
                            "by IK, and the state gets the measured tcp poses; ee.py). Needs a simulated robot's "
                            "joint layout (its kinematics); not with --waist-turn")
    object_frame: str = opt("", "with --action-space ee, --grounded, --freeze-vision and --shift 0: a role the grounding head locates "
                            "(e.g. 'target'): each arm's tcp (x, y) in state and actions is taken relative to where "
                            "the frozen head puts that object in the chunk's first frame, and the joint angles leave "
                            "the state (ee.py); '' = off")
    relative: bool = opt(False, "with --action-space ee: each chunk's tcp positions (and the keyframe's) relative to "
                         "the measured tcp position at the chunk's first frame (ee.relative_actions); not with "
                         "--object-frame")
    velocity: bool = opt(False, "the state also holds each joint's change over the last control step (qpos[t] - "
                         "qpos[t-1]; obs['prev_qpos'] at inference): a chunk requested mid-motion then knows how "
                         "fast the arm is going. Joint actions only (not with --action-space ee)")
    ground_noise: float = opt(0.0, "with --grounded: std (metres) of Gaussian noise on the objects' world (x, y) the "
                              "policy sees in training (0 = off): nearby layouts must ask for nearby actions")
    vision_warmup: int = opt(0, "steps at the start during which the transformer blocks (backbone and expert) "
                             "stay at their random init and only the encoders, embeddings and input/output "
                             "layers learn: a trained readout learns to ignore a from-scratch ViT before it "
                             "can see (probe_vision.py --freeze-backbone)")
    batch_size: int = opt(32, "samples per step")
    lr: float = opt(3e-4, "peak learning rate (from scratch; pi0 fine-tunes at 2.5e-5)")
    warmup: int = opt(500, "linear warm-up steps (capped at 10%% of --steps), then cosine")
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of --lr")
    weight_decay: float = opt(1e-4, "AdamW weight decay on weight matrices (not norms, biases, embeddings)")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this")
    ema_decay: float = opt(0.999, "EMA decay (ramped up as (1+step)/(10+step) early on)")
    std_floor: float = opt(1e-2, "floor on the normalisation std (signal units)")
    shift: int = opt(4, "random-shift augmentation: pad by this many pixels and crop back (0 = off)")
    state_noise: float = opt(0.0, "std of Gaussian noise added to the normalised joint state in training (0 = off): "
                             "the absolute targets stay, so the policy learns to return to the demonstration and "
                             "cannot recognise a demonstration by its exact joint trajectory")
    baseline_threshold: float = opt(0.6, "stage baseline: gripper qpos below this (0..1 of open) = closed")
    log_every: int = opt(50, "steps between metrics.jsonl lines")
    save_every: int = opt(1000, "steps between checkpoints (and always at the end)")
    device: str = opt("auto", "'auto' (cuda if available), 'cpu' or 'cuda'")
    threads: int = opt(0, "CPU threads for torch (0 = torch's default; 1 is faster on small, busy CPUs)")
    compile: bool = opt(False, "torch.compile the model (CUDA only)")
    exp_name: str = opt("", "experiment name in the run name task__exp__seed (default from the weights)")
    stop_after: int = opt(0, "stop after this many steps of this invocation, as if killed (tests resume)")

    def __post_init__(self):
        checks = [(self.steps > 0, "--steps must be > 0"), (self.batch_size > 0, "--batch-size must be > 0"),
                  (self.preset in PRESETS, f"--preset must be one of {list(PRESETS)}"),
                  (self.stage_weight >= 0 and self.keyframe_weight >= 0, "loss weights must be >= 0"),
                  (self.stage_label in ("per-arm", "any"), "--stage-label must be 'per-arm' or 'any'"),
                  (self.vit_stem in ("patch", "conv"), "--vit-stem must be 'patch' or 'conv'"),
                  (self.vit_pos in ("learned", "sincos"), "--vit-pos must be 'learned' or 'sincos'"),
                  (self.keypoints >= 0, "--keypoints must be >= 0"),
                  (0 <= self.vision_warmup < self.steps, "--vision-warmup must be in [0, --steps)"),
                  (not (self.vision_from and self.init_from), "--vision-from starts a fresh policy: not with --init-from"),
                  (not self.freeze_vision or self.vision_from, "--freeze-vision needs --vision-from"),
                  (not self.grounded or self.vision_from, "--grounded needs --vision-from"),
                  (not self.grounded_only or self.grounded, "--grounded-only needs --grounded"),
                  (self.ground_noise >= 0 and (not self.ground_noise or self.grounded),
                   "--ground-noise must be >= 0 and needs --grounded"),
                  (not (self.symmetry or self.waist_turn) or self.grounded_only, "--symmetry and --waist-turn need "
                   "--grounded-only (the images are not transformed, so the policy may see only the positions)"),
                  (0 <= self.waist_turn <= 1.0, "--waist-turn must be in [0, 1] rad"),
                  (self.action_space in ("joint", "ee"), "--action-space must be 'joint' or 'ee'"),
                  (not self.relative or (self.action_space == "ee" and not self.object_frame),
                   "--relative needs --action-space ee and is not for --object-frame"),
                  (not self.object_frame or (self.action_space == "ee" and self.grounded and self.shift == 0
                                             and self.freeze_vision),
                   "--object-frame needs --action-space ee, --grounded, --freeze-vision and --shift 0 (its frame is "
                   "the frozen grounding head's estimate on the unshifted frame)"),
                  (not (self.action_space == "ee" and self.waist_turn), "--waist-turn works on joint actions only "
                   "(not with --action-space ee)"),
                  (not (self.action_space == "ee" and self.velocity), "--velocity works on joint actions only "
                   "(not with --action-space ee)"),
                  (self.std_floor > 0, "--std-floor must be > 0"), (self.shift >= 0, "--shift must be >= 0"),
                  (self.state_noise >= 0, "--state-noise must be >= 0"),
                  (self.log_every > 0 and self.save_every > 0, "--log-every and --save-every must be > 0"),
                  (0 <= self.ema_decay < 1, "--ema-decay must be in [0, 1)")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def parse_options(argv=None) -> Options:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Options):
        flag, d = "--" + f.name.replace("_", "-"), f.default_factory() if callable(f.default_factory) else f.default
        if isinstance(d, bool):
            ap.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif isinstance(d, list):
            ap.add_argument(flag, nargs="+", default=d, help=f.metadata["help"], required=f.name == "data")
        else:
            ap.add_argument(flag, type=type(d), default=d, help=f"{f.metadata['help']} (default: {d})")
    return Options(**vars(ap.parse_args(argv)))


# ----------------------------------------------------------------------------- data

def open_is_high(convention) -> bool:
    s = str(convention).lower().replace(" ", "")
    return not ("0=open" in s or "1=closed" in s)


def load_folders(folders, cameras=None, stage_label="per-arm"):
    """All episodes of all folders in memory, flattened over steps, with StaKe labels per step.
    Raises data.DataError before any training on empty or mixed-format folders."""
    if not folders:
        raise data.DataError("--data: give at least one episode folder")
    metas = [data.load_meta(f) for f in folders]
    ref = metas[0]
    for f, m in zip(folders, metas):
        for key in ("action_names", "qpos_names", "gripper_indices", "fps", "image_size", "gripper_convention"):
            if m[key] != ref[key]:
                raise data.DataError(f"{f}/meta.json: '{key}' = {m[key]} differs from {folders[0]}: {ref[key]} "
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
    high = open_is_high(ref["gripper_convention"])
    H, W = ref["image_size"]
    imgs, qpos, act, stage, key, acting, ep_id, ends, texts, ep_tasks = ([] for _ in range(10))
    tasks = {}
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
            seg = segment.segment(ep["action"][:, gi], open_is_high=high, levels=(0.0, 1.0) if high else (1.0, 0.0))
            s = seg.stage.astype(np.float32)                                  # (T, G) 1 = closed = skill
            stage.append(s.max(1, keepdims=True) if stage_label == "any" else s)
            key.append(segment.keyframe_targets(ep["action"], seg).astype(np.float32))  # (T, A)
            moving = np.flatnonzero(seg.moving)  # --waist-turn: the one arm whose gripper acts, else -1
            acting.append(np.full(T, moving[0] if len(moving) == 1 else -1))
            imgs.append(np.stack([ep["images"][c] for c in cams], 1))         # (T, C, H, W, 3)
            qpos.append(ep["qpos"]), act.append(ep["action"])
            ep_id.append(np.full(T, len(texts))), texts.append(ep["instruction"]), ep_tasks.append(ep["task"])
            ends.append(np.full(T, n + T - 1))
            n += T
    t = lambda xs, dt=None: torch.from_numpy(np.concatenate(xs)) if dt is None else torch.from_numpy(np.concatenate(xs).astype(dt))
    return dict(images=t(imgs), qpos=t(qpos), action=t(act), stage=t(stage), keyframe=t(key),
                acting_arm=t(acting, np.int64), ep_id=t(ep_id, np.int64), end=t(ends, np.int64), texts=texts,
                ep_tasks=ep_tasks, cameras=cams,
                meta=dict(fps=ref["fps"], robot=ref.get("robot", ""), action_names=ref["action_names"],
                          qpos_names=ref["qpos_names"], gripper_indices=gi, gripper_convention=ref["gripper_convention"],
                          arms=ref.get("arms", []), cameras=cams, image_size=[H, W], tasks=tasks,
                          stage_label=stage_label, data=[str(f) for f in folders]))


def relative_view(D, horizon: int) -> dict:
    """What the statistics are computed on: D itself, or with --relative every step's chunk of `horizon` actions
    relative to its first frame's tcp (flattened), as make_batch will give them."""
    if not D["meta"].get("relative"):
        return D
    import ee
    N = len(D["action"])
    cidx = torch.minimum(torch.arange(N)[:, None] + torch.arange(horizon), D["end"][:, None])    # (N, H)
    rel = ee.relative_actions(D["action"][cidx], D["qpos"], len(D["meta"]["qpos_names"]))        # (N, H, A)
    return dict(qpos=D["qpos"], action=rel.flatten(0, 1))


def previous_qpos(D) -> torch.Tensor:
    """--velocity: each row's qpos one control step earlier in its episode (an episode's first row: its own)."""
    i = torch.arange(len(D["qpos"]))
    first = (i == 0) | (D["ep_id"] != D["ep_id"].roll(1))
    return D["qpos"][torch.where(first, i, i - 1)]                                    # (N, Dq)


def with_velocity(qpos, qpos_prev):
    """--velocity: the state is the joints and their change over the last control step."""
    return qpos if qpos_prev is None else torch.cat([qpos, qpos - qpos_prev], -1)  # (..., 2 Dq)


def compute_stats(D, floor: float) -> dict:
    s = lambda x: x.std(0, unbiased=False).clamp(min=floor).tolist()
    q = with_velocity(D["qpos"], D.get("qpos_prev"))
    return dict(qpos_mean=q.mean(0).tolist(), qpos_std=s(q),
                action_mean=D["action"].mean(0).tolist(), action_std=s(D["action"]), std_floor=floor)


def random_shift(x, shifts, pad: int):
    """x (B, C, 3, H, W) float; shifts (B, C, 2) in [0, 2 pad]: replicate-pad and crop back (DrQ style)."""
    B, C, _, H, W = x.shape
    x = F.pad(x.flatten(0, 1), (pad,) * 4, mode="replicate").permute(0, 2, 3, 1)   # (B*C, H+2p, W+2p, 3)
    s = shifts.flatten(0, 1).to(x.device)
    rows = s[:, :1] + torch.arange(H, device=x.device)                             # (B*C, H)
    cols = s[:, 1:] + torch.arange(W, device=x.device)                             # (B*C, W)
    n = torch.arange(B * C, device=x.device)[:, None, None]
    return x[n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).unflatten(0, (B, C))


def make_batch(D, lang, norm: Normalizer, g: torch.Generator, B: int, horizon: int, image_size, shift: int,
               gripper_indices, device, state_noise: float = 0.0, scene=None, symmetry: bool = False,
               waist_turn: float = 0.0):
    """Sample B steps uniformly over all episodes (generator g only); chunks running past an episode's end
    repeat its last action and are masked. Images are augmented and normalised on the device.
    With `scene` (scene_augmentation's tensors, on the device) the samples are moved as a demonstration of
    another layout would be: --waist-turn turns the acting arm's waist by a random angle, --symmetry applies the
    scene's symmetry to half of them (both drawn last); `ground_matrix` (B, 2, 2) and `ground_offset` (B, 2) tell the model how
    the objects' world (x, y) moved alike: (x, y) -> M (x, y) + t."""
    N = len(D["action"])
    idx = torch.randint(0, N, (B,), generator=g)                                   # (B,)
    end = D["end"][idx][:, None]
    cidx = idx[:, None] + torch.arange(horizon)                                    # (B, H)
    valid, cidx = cidx <= end, torch.minimum(cidx, end)
    shifts = torch.randint(0, 2 * shift + 1, (B, D["images"].shape[1], 2), generator=g) if shift else None
    to = lambda x: x.to(device, non_blocking=True)
    images = images_to_input(to(D["images"][idx]), image_size)                     # (B, C, 3, H, W)
    if shift:
        images = random_shift(images, shifts, shift)
    qpos, actions, keyframe, stage = (to(D[k][i]) for k, i in (("qpos", idx), ("action", cidx),
                                                               ("keyframe", idx), ("stage", idx)))
    qprev = to(D["qpos_prev"][idx]) if "qpos_prev" in D else None  # --velocity: moved below as qpos is
    # drawn last, each only when asked for: without them the stream (and every earlier run) is unchanged
    noise = to(torch.randn((B, D.get("state_dim", qpos.shape[1])), generator=g)) if state_noise else None
    out = {}
    if scene is not None:
        S = scene  # on the device already (train)
        flip = to(torch.rand(B, generator=g) < 0.5) if symmetry else None             # (B,)
        M, t = torch.eye(2, device=device).expand(B, 2, 2), torch.zeros(B, 2, device=device)
        if waist_turn:  # first, in the recorded scene: about the acting arm's base
            arm = to(D["acting_arm"][idx])                                             # (B,) -1: none or both
            angle = to(torch.rand(B, generator=g) * 2 - 1) * waist_turn * (arm >= 0)  # (B,) rad
            waist, base = S["waist"][arm.clamp(min=0)], S["base"][arm.clamp(min=0)]    # (B,), (B, 2)
            turn = torch.zeros_like(qpos)
            turn[torch.arange(B, device=device), waist] = angle
            qpos, actions, keyframe = qpos + turn, actions + turn[:, None], keyframe + turn
            qprev = None if qprev is None else qprev + turn
            cos, sin = angle.cos(), angle.sin()
            M = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
            t = base - (M @ base[..., None])[..., 0]                                   # (B, 2): about the base
        if flip is not None and "action_sym" in D:  # --action-space ee: moved at load time (end_effector_view)
            qpos = torch.where(flip[:, None], to(D["qpos_sym"][idx]), qpos)
            actions = torch.where(flip[:, None, None], to(D["action_sym"][cidx]), actions)
            keyframe = torch.where(flip[:, None], to(D["keyframe_sym"][idx]), keyframe)
        elif flip is not None:  # then the scene's symmetry, on joints and positions alike
            move = lambda x: x[..., S["index"]] * S["sign"] + S["offset"]
            qpos = torch.where(flip[:, None], move(qpos), qpos)
            qprev = None if qprev is None else torch.where(flip[:, None], move(qprev), qprev)
            actions = torch.where(flip[:, None, None], move(actions), actions)
            keyframe = torch.where(flip[:, None], move(keyframe), keyframe)
        if flip is not None:
            if stage.shape[1] == len(S["stage_index"]):  # per gripper; "any" (one column over two arms) stays
                stage = torch.where(flip[:, None], stage[:, S["stage_index"]], stage)
            xy = torch.where(flip[:, None], S["xy_sign"], torch.ones_like(S["xy_sign"]))  # (B, 2)
            M, t = xy[..., None] * M, xy * t
        out["ground_matrix"], out["ground_offset"] = M, t
    gripper_qpos = qpos[:, gripper_indices]
    if D["meta"].get("relative"):  # --relative (ee.py): positions from the measured tcp at the chunk's start
        import ee
        dq = len(D["meta"]["qpos_names"])
        actions, keyframe = ee.relative_actions(actions, qpos, dq), ee.relative_actions(keyframe, qpos, dq)
    if "ground" in D:  # --object-frame (ee.py): tcp (x, y) relative to the frame object, moved with the scene
        import ee
        ref = to(D["ground"][idx])                                                 # (B, 2) metres
        if "ground_matrix" in out:
            ref = (out["ground_matrix"] @ ref[..., None])[..., 0] + out["ground_offset"]
        qpos = ee.object_state(qpos, ref, len(D["meta"]["qpos_names"]), gripper_indices)
        actions, keyframe = ee.object_actions(actions, ref), ee.object_actions(keyframe, ref)
    state = norm.state(with_velocity(qpos, qprev))
    if noise is not None:
        state = state + state_noise * noise
    e = D["ep_id"][idx]
    return dict(images=images, lang_ids=to(lang[0][e]), lang_mask=to(lang[1][e]), state=state,
                actions=norm.action(actions), action_valid=to(valid), stage=stage,
                keyframe=norm.action(keyframe), gripper_qpos=gripper_qpos, **out)


def scene_augmentation(meta: dict) -> dict:
    """--symmetry / --waist-turn: the SYMMETRY and WAISTS of the suite (sim.py, twin.py) whose robot recorded
    this data, as tensors for make_batch. Raises data.DataError where the data's robot or joint layout is not
    a suite's."""
    import sim  # here: training without them needs no MuJoCo
    suite = next((s for s in sim.suites() if s.ROBOT == meta.get("robot")), None)
    if suite is None or not meta["action_names"] == meta["qpos_names"] == suite.ACTION_NAMES:
        raise data.DataError(f"--symmetry and --waist-turn need the joint layout of a simulated robot "
                             f"({', '.join(s.ROBOT for s in sim.suites())}); the data has robot "
                             f"'{meta.get('robot')}', actions {meta['action_names']}, qpos {meta['qpos_names']}")
    S, gi = suite.SYMMETRY, list(meta["gripper_indices"])
    f = lambda x: torch.tensor(x, dtype=torch.float32)
    return dict(index=torch.tensor(S["joint_index"]), sign=f(S["joint_sign"]), offset=f(S["joint_offset"]),
                stage_index=torch.tensor([gi.index(S["joint_index"][i]) for i in gi]),  # gripper g <- its image
                xy_sign=f(S["xy_sign"]), base=f([b for b, _ in suite.WAISTS]),          # (G, 2) per gripper's arm
                waist=torch.tensor([w for _, w in suite.WAISTS]))


def end_effector_view(D, symmetry: bool) -> None:
    """--action-space ee (ee.py), in place: actions and keyframe targets become each arm's tcp pose and gripper,
    the state gets the measured tcp poses appended (the raw joints stay first, so gripper_indices still index
    it). With --symmetry the moved samples are computed here as well (forward kinematics of the moved joints:
    the Franka's mirror is no rotation of the 6-D pose), for make_batch to pick."""
    import ee  # here: joint-space training needs no MuJoCo
    meta = D["meta"]
    try:
        kin = ee.Kinematics(meta.get("robot", ""))
    except ValueError as err:
        raise data.DataError(f"{', '.join(meta['data'])}: {err}") from None
    if not meta["action_names"] == meta["qpos_names"] == ee.suite_of_robot(meta["robot"]).ACTION_NAMES:
        raise data.DataError(f"--action-space ee: the data's actions {meta['action_names']} / qpos {meta['qpos_names']} "
                             f"are not the joint layout of robot '{meta['robot']}'")
    views = [("", lambda q: q)]
    if symmetry:  # the joints moved exactly as make_batch moves them for joint targets
        S = scene_augmentation(meta)
        views.append(("_sym", lambda q: (torch.from_numpy(q)[:, S["index"]] * S["sign"] + S["offset"]).numpy()))
    q, a, k = (D[n].numpy() for n in ("qpos", "action", "keyframe"))
    for suffix, move in views:
        D["qpos" + suffix] = torch.from_numpy(kin.state(move(q)))                      # (N, Dq + 9 arms)
        D["action" + suffix] = torch.from_numpy(kin.to_ee(move(a)))                    # (N, 10 arms)
        D["keyframe" + suffix] = torch.from_numpy(kin.to_ee(move(k)))
    meta["action_space"], meta["ee_names"] = "ee", kin.names


@torch.no_grad()
def grounded_positions(model, D, lang, device, role: int, batch: int = 256) -> torch.Tensor:
    """--object-frame: (N, 2) world (x, y) of grounded object `role` in every training frame, as the frozen
    grounding head reports it (the Policy asks the same head at every query)."""
    out = []
    for i in range(0, len(D["images"]), batch):
        e = D["ep_id"][i:i + batch]
        images = images_to_input(D["images"][i:i + batch].to(device), model.cfg.image_size)
        pos = model.grounded_world(images, lang[0][e].to(device), lang[1][e].to(device))  # (b, 2R)
        out.append(pos[:, 2 * role:2 * role + 2].float().cpu())
    return torch.cat(out)


def sample_noise_time(g: torch.Generator, B: int, horizon: int, A: int, device):
    """pi0: noise ~ N(0, I); t ~ Beta(1.5, 1) * 0.999 + 0.001 (inverse CDF: Beta(a, 1) = U^(1/a))."""
    noise = torch.randn(B, horizon, A, generator=g)
    t = torch.rand(B, generator=g) ** (1 / 1.5) * 0.999 + 0.001
    return noise.to(device), t.to(device)


# ----------------------------------------------------------------------------- model, optimiser, checkpoints

def model_config(opts: Options, D, base: dict) -> ModelConfig:
    """`base` (a preset for a fresh run, or the config of --init-from / --resume) with the StaKe heads
    this run asks for: a head whose weight is 0 is not created."""
    n_stage = D["stage"].shape[1] if opts.stage_weight > 0 else 0
    return ModelConfig(**{**base, "n_stage": n_stage, "keyframe_head": opts.keyframe_weight > 0})


def new_model(cfg: ModelConfig, seed: int) -> VLA:
    torch.manual_seed(seed)  # base weights depend on the seed only; StaKe parts use their own generator
    return VLA(cfg, seed=seed)


def make_optimizer(model, opts: Options):
    """AdamW (0.9, 0.95) as pi0; weight decay on weight matrices only (not norms, biases, embeddings, tokens)."""
    no_decay = lambda n, p: p.dim() < 2 or any(s in n for s in ("query", "emb", "pos"))
    decay = [p for n, p in model.named_parameters() if not no_decay(n, p)]
    rest = [p for n, p in model.named_parameters() if no_decay(n, p)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step: int, opts: Options) -> float:
    warm = max(1, min(opts.warmup, opts.steps // 10))
    if step <= warm:
        return opts.lr * step / warm
    p = (step - warm) / max(1, opts.steps - warm)
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode:
            return "uncommitted"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: Path, obj: dict) -> None:
    data.atomic_write_bytes(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def train_step(model, optimizer, batch, noise, t, opts: Options, amp: bool, frozen=()):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(batch, noise, t)
    loss = out["policy_loss"]
    if "stage_loss" in out:
        loss = loss + opts.stage_weight * out["stage_loss"]      # StaKe
    if "keyframe_l1" in out:
        loss = loss + opts.keyframe_weight * out["keyframe_l1"]  # StaKe
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p in frozen:  # --vision-warmup: AdamW skips a parameter without a gradient (no step, no decay)
        p.grad = None
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
    optimizer.step()
    return out, loss, grad_norm


# ----------------------------------------------------------------------------- training

def train(opts: Options) -> dict:
    out_dir = Path(opts.out)
    ck_path = out_dir / "ckpt.pt"
    resume = load_checkpoint(ck_path) if opts.resume and ck_path.is_file() else None
    if opts.resume and resume is None:
        print(f"--resume: no {ck_path} yet, starting fresh")
    if resume is not None:
        same = {k: v for k, v in dataclasses.asdict(opts).items() if k not in ("resume", "stop_after", "compile", "device", "threads")}
        defaults = {f.name: getattr(Options(), f.name) for f in dataclasses.fields(Options)}  # options added later
        was = {k: resume["options"].get(k, defaults[k]) for k in same}
        if diff := {k: (was[k], same[k]) for k in same if was[k] != same[k]}:
            raise ValueError(f"--resume: options differ from {ck_path} (was, now): {diff}")
    src = resume or (load_checkpoint(opts.init_from) if opts.init_from else None)
    grounding = load_checkpoint(opts.vision_from) if opts.vision_from and resume is None else None
    if grounding is not None and grounding.get("kind") != "grounding":
        raise ValueError(f"--vision-from {opts.vision_from}: not a ground.py checkpoint (use --init-from for a policy)")

    # seeding: one block; the data generator depends on the seed alone
    random.seed(opts.seed), np.random.seed(opts.seed), torch.manual_seed(opts.seed)
    g_data = torch.Generator().manual_seed(opts.seed)
    g_flow = torch.Generator().manual_seed(opts.seed + 1)
    device = torch.device("cuda" if opts.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if opts.device == "auto" else opts.device))
    amp = device.type == "cuda"  # bf16 autocast on CUDA; fp32 on the CPU
    if amp:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if opts.threads:
        torch.set_num_threads(opts.threads)

    # data (validated before anything trains)
    cams = opts.cameras or (src["meta"]["cameras"] if src else None)
    D = load_folders(opts.data, cams, opts.stage_label)
    if src is not None and src["meta"].get("action_space", "joint") != opts.action_space:
        raise ValueError(f"--action-space {opts.action_space}: the checkpoint predicts "
                         f"{src['meta'].get('action_space', 'joint')} actions ({opts.init_from or ck_path})")
    if src is not None and bool(src["meta"].get("relative")) != opts.relative:
        raise ValueError(f"--relative must match the checkpoint, which was trained "
                         f"{'with' if src['meta'].get('relative') else 'without'} it ({opts.init_from or ck_path})")
    if opts.action_space == "ee":  # StaKe's keyframe target moves to the same space as the actions
        end_effector_view(D, opts.symmetry)
        if opts.relative:
            D["meta"]["relative"] = True
    meta, A, Dq = D["meta"], D["action"].shape[1], D["qpos"].shape[1]
    if opts.object_frame:  # the state: gripper openings + each arm's tcp pose (ee.object_state)
        import ee
        Dq = D["state_dim"] = len(meta["gripper_indices"]) * (1 + ee.POSE)
    elif src is not None and src["meta"].get("object_frame") is not None:  # --object-frame needs --vision-from
        raise ValueError(f"fine-tuning an --object-frame checkpoint (--init-from) is not supported ({opts.init_from})")
    if src is not None and bool(src["meta"].get("velocity")) != opts.velocity:
        raise ValueError(f"--velocity must match the checkpoint, which was trained "
                         f"{'with' if src['meta'].get('velocity') else 'without'} it ({opts.init_from or ck_path})")
    if opts.velocity:
        D["qpos_prev"] = previous_qpos(D)
        Dq = D["state_dim"] = 2 * Dq
        meta["velocity"] = True
    if src is not None:
        mc = src["model_config"]
        if (mc["action_dim"], mc["state_dim"]) != (A, Dq):
            raise data.DataError(f"action/qpos dimension {A}/{Dq} of {opts.data} disagrees with the checkpoint's "
                                 f"{mc['action_dim']}/{mc['state_dim']} ({opts.init_from or ck_path})")
        if mc["n_cameras"] != len(D["cameras"]):
            raise data.DataError(f"{len(D['cameras'])} cameras {D['cameras']} but the checkpoint has {mc['n_cameras']}")
        tok, stats = Tokenizer(src["tokenizer"]), src["stats"]
        cfg = model_config(opts, D, mc)
    elif grounding is not None:  # the grounding run's front end; everything that acts is new
        gc = grounding["model_config"]
        if tuple(gc["image_size"]) != tuple(meta["image_size"]):
            raise data.DataError(f"image size {list(meta['image_size'])} of {', '.join(opts.data)} differs from the "
                                 f"grounding checkpoint's {list(gc['image_size'])} ({opts.vision_from})")
        if opts.grounded and D["cameras"] != grounding["meta"]["cameras"]:
            raise data.DataError(f"--grounded reads the keypoints of cameras {grounding['meta']['cameras']} in that "
                                 f"order ({opts.vision_from}); this run has {D['cameras']} (set --cameras)")
        if unseen := [c for c in D["cameras"] if c not in grounding["meta"]["cameras"]]:
            print(f"warning: camera(s) {unseen} were not in grounding ({grounding['meta']['cameras']})", file=sys.stderr)
        tok, stats = Tokenizer(grounding["tokenizer"]), compute_stats(relative_view(D, gc["horizon"]), opts.std_floor)
        cfg = model_config(opts, D, {**gc, "use_state": not opts.no_state, "action_dim": A, "state_dim": Dq,
                                     "n_cameras": len(D["cameras"]),
                                     "grounded": grounding["head"]["bias"].shape[0] if opts.grounded else 0,
                                     "grounded_only": opts.grounded_only,
                                     "ground_mean": grounding["meta"]["target_mean"] if opts.grounded else (),
                                     "ground_std": grounding["meta"]["target_std"] if opts.grounded else ()})
    else:
        tok = Tokenizer(train_tokenizer(sorted(set(D["texts"])), PRESETS[opts.preset]["vocab_size"]))
        stats = compute_stats(relative_view(D, PRESETS[opts.preset]["horizon"]), opts.std_floor)
        cfg = model_config(opts, D, dataclasses.asdict(ModelConfig.from_preset(
            opts.preset, **({"patch_size": opts.patch_size} if opts.patch_size else {}), use_state=not opts.no_state,
            vit_stem=opts.vit_stem, image_pos=opts.image_pos, vit_pos=opts.vit_pos, keypoints=opts.keypoints,
            action_dim=A, state_dim=Dq, n_cameras=len(D["cameras"]),
            image_size=tuple(meta["image_size"]), vocab_size=tok.vocab_size)))
    lang = tok(D["texts"], cfg.lang_len)                                               # (E, L) ids, mask
    if (long := [t for t in set(D["texts"]) if len(tok.ids(t)) > cfg.lang_len]):
        print(f"warning: {len(long)} instruction(s) longer than {cfg.lang_len} tokens are truncated", file=sys.stderr)
    norm = Normalizer(stats, device)
    scene = ({k: v.to(device) for k, v in scene_augmentation(meta).items()}  # moved once, used every step
             if opts.symmetry or opts.waist_turn else None)
    meta["tasks"] = {**(src["meta"].get("tasks", {}) if src else {}), **meta["tasks"]}

    # model, EMA, optimiser
    model = new_model(cfg, opts.seed).to(device)
    if src is not None:  # --init-from: the EMA weights, strict for the base; --resume: everything, strict
        sd = src["ema"] if resume is None and src.get("ema") is not None else src["model"]
        allowed = (lambda k: False) if resume is not None else (lambda k: k.startswith(("stage_", "keyframe_")))
        own = model.state_dict()  # a StaKe head of another shape (per-arm vs any) starts fresh
        sd = {k: v for k, v in sd.items() if not (allowed(k) and k in own and own[k].shape != v.shape)}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if bad := [k for k in missing + unexpected if not allowed(k)]:
            raise ValueError(f"checkpoint does not fit the model (missing or unexpected): {bad}")
        if missing or unexpected:
            print(f"init-from: fresh StaKe parameters {missing}, dropped {unexpected}")
        if src["meta"]["action_names"] != meta["action_names"]:
            print(f"warning: action names differ from the checkpoint's: {src['meta']['action_names']}", file=sys.stderr)
    if grounding is not None:
        own, sd = model.state_dict(), dict(grounding["vision"])
        if opts.grounded:  # ground.py keeps its head apart from the model; here it is model.ground_head
            sd |= {f"ground_head.{k}": v for k, v in grounding["head"].items()}
        if bad := [k for k, v in sd.items() if k not in own or own[k].shape != v.shape]:
            raise ValueError(f"--vision-from {opts.vision_from}: weights that do not fit the model: {bad}")
        model.load_state_dict(sd, strict=False)
    if opts.object_frame:  # --object-frame: the frame object's position in every frame, then (fresh runs) the stats
        if src is not None:
            role = src["meta"]["object_frame"]
        elif opts.object_frame in grounding["meta"]["roles"]:
            role = grounding["meta"]["roles"].index(opts.object_frame)
        else:
            raise ValueError(f"--object-frame {opts.object_frame}: the grounding head locates {grounding['meta']['roles']} "
                             f"({opts.vision_from})")
        D["ground"] = grounded_positions(model, D, lang, device, role)
        meta["object_frame"] = role  # the index of the role among the grounding head's (x, y) pairs
        if src is None:
            import ee
            ref, dq = D["ground"], len(meta["qpos_names"])
            stats = compute_stats(dict(qpos=ee.object_state(D["qpos"], ref, dq, meta["gripper_indices"]),
                                       action=ee.object_actions(D["action"], ref)), opts.std_floor)
            norm = Normalizer(stats, device)
    if opts.freeze_vision:  # requires_grad off: AdamW skips a parameter without a gradient (no step, no decay)
        for n, p in model.named_parameters():
            if n.startswith(VISION_PREFIXES):
                p.requires_grad_(False)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = make_optimizer(model, opts)
    step = 0
    if resume is not None:
        ema.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        step = resume["step"]
        g_data.set_state(resume["rng"]["data"]), g_flow.set_state(resume["rng"]["flow"])
        torch.set_rng_state(resume["rng"]["torch"])
    fwd = torch.compile(model) if opts.compile and device.type == "cuda" else model
    task = "+".join(sorted(set(D["ep_tasks"])))[:60] or "data"
    run = f"{task}__{opts.exp_name or f'ss{opts.stage_weight:g}_ks{opts.keyframe_weight:g}'}__{opts.seed}"
    print(f"run {run} on {device} | {len(D['texts'])} episodes, {len(D['action'])} steps, cameras {D['cameras']}")
    print(f"{format_counts(param_counts(model))} | vocab {tok.vocab_size} | start step {step}")

    def checkpoint(s):
        save_checkpoint(ck_path, dict(
            model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(), step=s,
            options=dataclasses.asdict(opts), model_config=dataclasses.asdict(cfg), stats=stats,
            tokenizer=tok.proto, meta=meta, git=git_revision(), run=run,
            rng=dict(data=g_data.get_state(), flow=g_flow.get_state(), torch=torch.get_rng_state())))

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    kept = [l for l in metrics_path.read_text().splitlines() if json.loads(l)["step"] <= step] if (
        resume is not None and metrics_path.exists()) else []
    metrics_path.write_text("".join(l + "\n" for l in kept))
    acc, t_log, t_bar, first, last = {}, time.perf_counter(), 0.0, step, {}
    high = open_is_high(meta["gripper_convention"])
    blocks = [p for n, p in model.named_parameters() if n.startswith(("blocks.", "expert."))]  # --vision-warmup
    while step < opts.steps:
        step += 1
        lr = lr_at(step, opts)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = make_batch(D, lang, norm, g_data, opts.batch_size, cfg.horizon, cfg.image_size, opts.shift,
                           meta["gripper_indices"], device, opts.state_noise, scene, opts.symmetry,
                           opts.waist_turn)
        if opts.ground_noise:  # after the batch's own draws: without it the data stream is unchanged
            noise_xy = torch.randn(opts.batch_size, cfg.grounded, generator=g_data)             # (B, 2R)
            batch["ground_noise"] = opts.ground_noise * noise_xy.to(device)
        noise, t = sample_noise_time(g_flow, opts.batch_size, cfg.horizon, A, device)
        out, loss, gn = train_step(fwd, optimizer, batch, noise, t, opts, amp,
                                   blocks if step <= opts.vision_warmup else ())
        decay = min(opts.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        # metrics (summed as tensors; read back only when logging)
        grip = batch["gripper_qpos"]
        closed = (grip < opts.baseline_threshold) if high else (grip > 1 - opts.baseline_threshold)
        closed = closed.any(1, keepdim=True) if opts.stage_label == "any" else closed
        m = dict(loss=loss, policy_loss=out["policy_loss"], grad_norm=gn,
                 stage_acc_threshold=(closed.float() == batch["stage"]).float().mean())
        if "stage_loss" in out:
            m["stage_loss"] = out["stage_loss"]
            m["stage_acc"] = ((out["stage_logits"] > 0).float() == batch["stage"]).float().mean()
        if "keyframe_l1" in out:
            m["keyframe_l1"] = out["keyframe_l1"]
        for k, v in m.items():
            acc[k] = acc.get(k, 0.0) + v.detach().float()
        stop = opts.stop_after and step - first >= opts.stop_after
        if step % opts.log_every == 0 or step == opts.steps or stop:
            n_steps, dt = step - (last.get("step") or first), time.perf_counter() - t_log
            last = {"step": step, **{k: round(float(v) / n_steps, 6) for k, v in acc.items()}, "lr": lr,
                    "samples_per_s": round(n_steps * opts.batch_size / dt, 2)}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(last) + "\n")
            acc, t_log = {}, time.perf_counter()
        if step % opts.save_every == 0 or step == opts.steps or stop:
            checkpoint(step)
        if time.perf_counter() - t_bar > 0.25 or step == opts.steps or stop:
            t_bar = time.perf_counter()
            done = int(30 * step / opts.steps)
            extra = " ".join(f"{k} {last[k]:.3f}" for k in ("policy_loss", "stage_acc", "keyframe_l1") if k in last)
            print(f"\r{run} {step}/{opts.steps} [{'#' * done}{'.' * (30 - done)}] {extra} "
                  f"{last.get('samples_per_s', 0):.0f} samples/s ", end="", file=sys.stderr, flush=True)
        if stop:
            break
    print(file=sys.stderr)
    if step == opts.steps:
        plot_metrics(metrics_path, out_dir / "loss.png")
    return last


# ----------------------------------------------------------------------------- loss-curve PNG (numpy + imageio)

FONT = {  # 3x5 pixel glyphs, rows top to bottom, 3 bits each
    "0": 0o75557, "1": 0o26227, "2": 0o71747, "3": 0o71717, "4": 0o55711, "5": 0o74717,
    "6": 0o74757, "7": 0o71111, "8": 0o75757, "9": 0o75717, ".": 0o00002, "-": 0o00700, "E": 0o74647,
    "A": 0o25755, "C": 0o34443, "F": 0o74644, "G": 0o34553, "K": 0o55655, "L": 0o44447, "O": 0o25552,
    "P": 0o75744, "R": 0o75765, "S": 0o34717, "T": 0o72222, "Y": 0o55222, "I": 0o72227, "M": 0o57555,
    "N": 0o75555, "H": 0o55755, "D": 0o65556, "_": 0o00007, " ": 0,
}


def draw_text(img, x, y, text, color, scale=2):
    for ch in text.upper():
        bits = FONT.get(ch, 0)
        for r in range(5):
            for c in range(3):
                if bits >> (3 * (4 - r) + (2 - c)) & 1:
                    img[y + r * scale: y + (r + 1) * scale, x + c * scale: x + (c + 1) * scale] = color
        x += 4 * scale


PANELS = [  # (curves, log10 scale); each curve (metric, colour)
    ([("policy_loss", (31, 119, 180))], True),
    ([("stage_loss", (214, 39, 40))], True),
    ([("stage_acc", (44, 160, 44)), ("stage_acc_threshold", (150, 150, 150))], False),
    ([("keyframe_l1", (148, 103, 189))], True),
    ([("lr", (255, 127, 14))], False),
]


def plot_metrics(metrics_path, png_path):
    """One panel per group of curves (log10 for losses): names in their colours above, min and max on
    the left, step range below. Stage accuracy shares its panel with the gripper-threshold baseline."""
    import imageio.v3 as iio
    rows = [json.loads(l) for l in Path(metrics_path).read_text().splitlines() if l.strip()]
    panels = [([(k, c) for k, c in curves if any(k in r for r in rows)], logy) for curves, logy in PANELS]
    panels = [(curves, logy) for curves, logy in panels if curves]
    if not rows or not panels:
        return
    Wp, Hp, left, pad = 560, 90, 84, 14
    img = np.full((len(panels) * (Hp + pad + 12) + 24, Wp + left + pad, 3), 255, np.uint8)
    steps_all = [r["step"] for r in rows]
    s0, s1 = min(steps_all), max(max(steps_all), min(steps_all) + 1)
    for i, (curves, logy) in enumerate(panels):
        top, y0 = pad + i * (Hp + pad + 12), pad + i * (Hp + pad + 12) + 12
        series = []
        for k, col in curves:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            ys = np.array([math.log10(max(v, 1e-8)) if logy else v for _, v in pts], float)
            series.append((np.array([s for s, _ in pts], float), ys, col))
        lo = min(ys.min() for _, ys, _ in series)
        hi = max(max(ys.max() for _, ys, _ in series), lo + 1e-9)
        x = left
        for k, col in curves:
            draw_text(img, x, top, k, col)
            x += 8 * len(k) + 16
        if logy:
            draw_text(img, x, top, "LOG10", (0, 0, 0))
        img[y0: y0 + Hp, left - 1], img[y0 + Hp, left - 1: left + Wp] = 0, 0    # axes
        draw_text(img, 2, y0, f"{hi:.3g}", (0, 0, 0)), draw_text(img, 2, y0 + Hp - 10, f"{lo:.3g}", (0, 0, 0))
        for xs, ys, col in series:
            px = left + (xs - s0) / (s1 - s0) * (Wp - 1)
            py = y0 + (hi - ys) / (hi - lo) * (Hp - 1)
            for j in range(max(len(px) - 1, 1)):  # line segments, densely sampled
                a, b = j, min(j + 1, len(px) - 1)
                n = int(max(abs(px[b] - px[a]), abs(py[b] - py[a]))) + 2
                u = np.linspace(0, 1, n)
                xx = np.round(px[a] + u * (px[b] - px[a])).astype(int)
                yy = np.round(py[a] + u * (py[b] - py[a])).astype(int)
                img[yy, xx], img[np.minimum(yy + 1, img.shape[0] - 1), xx] = col, col
    draw_text(img, left, img.shape[0] - 14, f"STEP {s0} - {s1}", (0, 0, 0))
    data.atomic_write_bytes(Path(png_path), lambda f: f.write(iio.imwrite("<bytes>", img, extension=".png")))


# ----------------------------------------------------------------------------- benchmark

def bench(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="train.py bench", description="time training, data and inference per preset")
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--data", nargs="+", default=None, help="episode folders (default: synthetic, 3 cameras 96 px)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="at least this many timed training steps (after 2 warm-up)")
    ap.add_argument("--seconds", type=float, default=5.0, help="...and at least this long per timed measurement")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch.utils.flop_counter import FlopCounterMode
    import tempfile
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tmp = tempfile.TemporaryDirectory()
    folders = args.data
    if folders is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))
        from synthetic import make_dataset
        folders = [make_dataset(Path(tmp.name) / "synthetic", n_episodes=4, T=100, image_size=(96, 96),
                                cameras=("top", "left_wrist", "right_wrist"))]
    def rate(fn, per_call):  # per_call * calls/s of fn, timed over at least --steps calls and --seconds
        sync()
        n, t0 = 0, time.perf_counter()
        while n < args.steps or time.perf_counter() - t0 < args.seconds:
            fn()
            n += 1
            sync()
        return n * per_call / (time.perf_counter() - t0)

    # dense matmul reference in the same run (fp32 on CPU, bf16 on CUDA: what training uses)
    n, dt_mm = (1024, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a, b = torch.randn(n, n, device=device, dtype=dt_mm), torch.randn(n, n, device=device, dtype=dt_mm)
    a @ b
    peak = rate(lambda: a @ b, 2 * n ** 3)
    dev_name = (torch.cuda.get_device_name() if device.type == "cuda" else
                f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    res = dict(command="python train.py bench " + " ".join(argv or []), git=git_revision(), device=dev_name,
               matmul_flops_per_s=peak, batch_size=args.batch_size, presets={})
    print(f"{dev_name} | dense {dt_mm} matmul {peak / 1e9:.1f} GFLOP/s | batch {args.batch_size}")
    print(f"{'preset':7s} {'params':>8s} {'train/s':>8s} {'GFLOP/smp':>9s} {'util':>6s} {'data/s':>8s} {'infer ms':>9s}")
    for p in args.presets:
        opts = Options(data=folders, preset=p, batch_size=args.batch_size, out=tmp.name)
        D = load_folders(folders, None, opts.stage_label)
        tok = Tokenizer(train_tokenizer(sorted(set(D["texts"])), PRESETS[p]["vocab_size"]))
        stats = compute_stats(D, opts.std_floor)
        cfg = model_config(opts, D, dataclasses.asdict(ModelConfig.from_preset(
            p, action_dim=D["action"].shape[1], state_dim=D["qpos"].shape[1], n_cameras=len(D["cameras"]),
            image_size=tuple(D["meta"]["image_size"]), vocab_size=tok.vocab_size)))
        model = new_model(cfg, opts.seed).to(device)
        optimizer, norm, lang = make_optimizer(model, opts), Normalizer(stats, device), tok(D["texts"], cfg.lang_len)
        g = torch.Generator().manual_seed(0)
        mk = lambda: make_batch(D, lang, norm, g, opts.batch_size, cfg.horizon, cfg.image_size, opts.shift,
                                D["meta"]["gripper_indices"], device)
        nt = lambda: sample_noise_time(g, opts.batch_size, cfg.horizon, cfg.action_dim, device)
        step = lambda: train_step(model, optimizer, mk(), *nt(), opts, device.type == "cuda")
        policy = Policy(model, tok, stats, D["meta"], device)  # inference first, before the training allocations
        obs = {"images": {c: D["images"][0, i].numpy() for i, c in enumerate(D["cameras"])},
               "qpos": D["qpos"][0].numpy(), "instruction": D["texts"][0]}
        times = []
        for i in range(33):
            sync()
            t0 = time.perf_counter()
            policy.predict_chunk([obs])
            sync()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        ms, ms_min = 1000 * float(np.median(times)), 1000 * float(np.min(times))
        model.train()
        with FlopCounterMode(display=False) as fc:
            step()
        flops = fc.get_total_flops() / opts.batch_size
        for _ in range(2):
            step()
        train_sps, data_sps = rate(step, opts.batch_size), rate(mk, opts.batch_size)
        counts = param_counts(model)
        r = dict(params=counts, train_samples_per_s=train_sps, flops_per_sample=flops,
                 utilisation=train_sps * flops / peak, data_samples_per_s=data_sps, data_over_train=data_sps / train_sps,
                 infer_ms_per_chunk=ms, infer_ms_per_chunk_min=ms_min, horizon=cfg.horizon, tokens_per_camera=(cfg.image_size[0] // cfg.patch_size) ** 2)
        res["presets"][p] = r
        print(f"{p:7s} {counts['total'] / 1e6:7.2f}M {train_sps:8.1f} {flops / 1e9:9.2f} {r['utilisation']:6.1%} "
              f"{data_sps:8.0f} {ms:9.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return res


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["bench"]:
            bench(argv[1:])
        else:
            train(parse_options(argv))
    except (data.DataError, ValueError, FileNotFoundError) as e:
        print(f"\ntrain.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
