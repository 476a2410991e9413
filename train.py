"""Train the VLA: flow matching on action chunks, plus StaKe's stage and keyframe losses.

    python train.py --data DIR [DIR ...] --out RUN --steps N [--stage-weight W --keyframe-weight W] [--resume]
    python train.py --data DIR --out RUN --vision-from GROUND_CKPT --freeze-vision --grounded --grounded-only \\
        --shift 0 --symmetry --velocity ...                      # the recipe that succeeds (README)
    torchrun --nproc-per-node N train.py ...   # data-parallel over N GPUs (or CPU processes): docs/distributed.md
    python lab/bench.py train [--presets tiny small] [--json results/bench/train_cpu.json]   # samples/s (was train.py bench)

Several folders train one multi-task, language-conditioned policy. `--init-from` fine-tunes an earlier
checkpoint (the paper's setting): its weights (the EMA copy), tokenizer and normalisation statistics are
reused; StaKe heads that the new run enables but the checkpoint lacks start fresh. `--resume` continues
RUN/ckpt.pt exactly (weights, EMA, optimiser, step and both random generators are in the checkpoint).
`--vision-from` starts a fresh policy whose vision-language front end (ViT, keypoint detectors, word
embeddings) and tokenizer come from a ground.py checkpoint; `--freeze-vision` keeps them fixed, and with
`--grounded-only --shift 0` their output is computed once per frame and cached (dataset.grounded_positions).
The data, its normalisation and the batches: dataset.py.

Randomness: the data order and augmentation come from one generator seeded by --seed alone, the flow's
noise and times from a second; neither depends on the StaKe weights, and the StaKe parameters come from
their own generator (model.py), so the four variants of a seed see the same batches from the same base
initialisation.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import data
import dataset
import segment
from data import opt
from model import PRESETS, VISION_PREFIXES, VLA, ModelConfig, Normalizer, Tokenizer, train_tokenizer

MIN_LR_RATIO = 0.1      # the cosine schedule ends at this fraction of --lr
GRAD_CLIP = 1.0         # global gradient-norm clip (pi0)
STAGE_THRESHOLD = 0.6   # metrics only: "closed" = measured gripper opening below this (the stage head's baseline)
SAVE_SECONDS = 90       # a checkpoint at least this often: a kill loses little (saving draws no random numbers)


def cpu_threads() -> int:
    """torch's CPU threads by default: half the cores. OpenMP threads spin while they wait for each other, so
    with as many threads as cores, one core taken by another process stalls them all (measured on 2 cores:
    about 5 samples/s with 2 threads beside a busy process against 50 with 1); torchrun's processes share them."""
    return max(1, (os.cpu_count() or 2) // 2 // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def distributed() -> tuple:
    """(rank, local rank, world size) as torchrun sets them in the environment; (0, 0, 1) for a plain run."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))


@dataclass
class Options:
    data: list = opt([], "episode folders (meta.json + episode_*.npz); several = one multi-task policy", required=True)
    out: str = opt("runs/debug", "run folder: ckpt.pt, metrics.jsonl, loss.png")
    steps: int = opt(20000, "optimiser steps")
    preset: str = opt("small", f"model size: {', '.join(PRESETS)} (ignored with --init-from/--resume/--vision-from)")
    seed: int = opt(0, "seeds weights, data order, augmentation and flow noise")
    stage_weight: float = opt(0.1, "StaKe: weight of the stage BCE loss; 0 = no stage head at all")
    keyframe_weight: float = opt(0.1, "StaKe: weight of the keyframe L1 loss; 0 = no keyframe head at all")
    stage_label: str = opt("per-arm", "StaKe: 'per-arm' (one label per gripper) or 'any' (skill if any closed)")
    init_from: str = opt("", "fine-tune from this checkpoint (weights, tokenizer and normalisation reused)")
    resume: bool = opt(False, "continue OUT/ckpt.pt if it exists (same options required)")
    cameras: list = opt([], "train on these cameras only (default: all of the first folder's)")
    vision_from: str = opt("", "a ground.py checkpoint: its model config, tokenizer and vision-language weights "
                           "(model.VISION_PREFIXES) start this run; the other weights start fresh")
    freeze_vision: bool = opt(False, "keep the front end (model.VISION_PREFIXES) fixed; with --grounded-only and "
                              "--shift 0 its output is computed once per frame and cached (grounded_positions)")
    grounded: bool = opt(False, "with --vision-from: also load its head (keypoints -> the named objects' (x, y)) "
                         "and give those positions to the policy (model.ModelConfig.grounded)")
    grounded_only: bool = opt(False, "with --grounded: the policy sees only those positions (one token), not the "
                              "keypoints they are read from")
    positions: str = opt("front_end", "with a frozen front end, --grounded-only and --shift 0, the positions the policy "
                         "trains on: 'front_end', its output on the demonstrations' images; 'simulator', the (x, y) "
                         "data.py records with each frame (privileged like the front end's labels; evaluation reads the "
                         "front end): on the front end's errors a policy learns a blurred map (docs/findings.md)")
    object_distances: bool = opt(False, "with --grounded: the distances between the named objects join their "
                                 "positions (model.ModelConfig.ground_distances): a block already on the pad and "
                                 "one still to pick differ there")
    object_tokens: bool = opt(False, "with --grounded-only: each named object is its own token, read by attention "
                              "only (model.ModelConfig.object_tokens): the policy picks its object instead of "
                              "blending them (stack_two's two reaches from one home pose); it costs a "
                              "single-target reach its precision (franka_put_in_bin 38 -> 13/100)")
    symmetry: bool = opt(False, "with --grounded-only: half the samples see the scene under its symmetry (the suite's "
                         "SYMMETRY: bimanual table turned half a turn, arms exchanged; twin mirrored in y), objects' "
                         "positions and joints alike: a demonstration of a layout the data does not hold")
    state_in: str = opt("prefix", "where the state token enters: 'prefix' (with images and language; the StaKe queries "
                        "read it) or 'expert' (pi0: first in the action expert's suffix, hidden from the StaKe heads); "
                        "--init-from and --resume keep the checkpoint's (model.ModelConfig.state_in)")
    vision_lr_scale: float = opt(1.0, "the unfrozen front end's (model.VISION_PREFIXES) learning rate as a fraction of "
                                 "--lr and its schedule (pi0-style: the pretrained part fine-tuned at a smaller rate)")
    velocity: bool = opt(False, "the state also holds each joint's change over the last control step (qpos[t] - "
                         "qpos[t-1]; obs['prev_qpos'] at inference)")
    phrasings: str = opt("templates", "each sample's instruction: 'templates', its episode's own; 'grammar', one of "
                         "world.words' ways of asking for the same objects, drawn anew per sample")
    batch_size: int = opt(32, "samples per step (under torchrun: in all, split evenly across the processes)")
    lr: float = opt(3e-4, "peak learning rate (from scratch; pi0 fine-tunes at 2.5e-5)")
    warmup: int = opt(500, "linear warm-up steps (capped at 10%% of --steps), then cosine")
    weight_decay: float = opt(1e-4, "AdamW weight decay on weight matrices (not norms, biases, embeddings)")
    ema_decay: float = opt(0.999, "EMA decay (ramped up as (1+step)/(10+step) early on)")
    shift: int = opt(4, "random-shift augmentation: pad by this many pixels and crop back (0 = off)")
    log_every: int = opt(50, "steps between metrics.jsonl lines")
    save_every: int = opt(1000, "steps between checkpoints (also every SAVE_SECONDS, and at the end)")
    device: str = opt("auto", "'auto' (cuda if available), 'cpu' or 'cuda'")
    threads: int = opt(0, "CPU threads for torch (0: half the cores, see cpu_threads)")
    stop_after: int = opt(0, "stop after this many steps of this invocation, as if killed (run in pieces, --resume)")

    def __post_init__(self):
        world = distributed()[2]
        checks = [(self.steps > 0, "--steps must be > 0"), (self.batch_size > 0, "--batch-size must be > 0"),
                  (self.batch_size % world == 0, f"--batch-size {self.batch_size} must be a multiple of the {world} "
                   "torchrun processes (it is the global batch, split evenly)"),
                  (self.preset in PRESETS, f"--preset must be one of {list(PRESETS)}"),
                  (self.stage_weight >= 0 and self.keyframe_weight >= 0, "loss weights must be >= 0"),
                  (self.stage_label in ("per-arm", "any"), "--stage-label must be 'per-arm' or 'any'"),
                  (not (self.vision_from and self.init_from), "--vision-from starts a fresh policy: not with --init-from"),
                  (not self.freeze_vision or self.vision_from or self.init_from,
                   "--freeze-vision needs --vision-from or --init-from"),
                  (not self.grounded or self.vision_from, "--grounded needs --vision-from"),
                  (not self.grounded_only or self.grounded, "--grounded-only needs --grounded"),
                  (not self.object_distances or self.grounded, "--object-distances needs --grounded"),
                  (not self.object_tokens or (self.grounded_only and not self.object_distances),
                   "--object-tokens needs --grounded-only, and not --object-distances"),
                  (not self.symmetry or self.grounded_only, "--symmetry needs --grounded-only (the images are not "
                   "transformed, so the policy may see only the positions)"),
                  (self.shift >= 0, "--shift must be >= 0"),
                  (self.state_in in ("prefix", "expert"), "--state-in must be 'prefix' or 'expert'"),
                  (self.vision_lr_scale > 0, "--vision-lr-scale must be > 0"),
                  (self.vision_lr_scale == 1 or not self.freeze_vision,
                   "--vision-lr-scale is the rate of an unfrozen front end: not with --freeze-vision"),
                  (self.phrasings in ("templates", "grammar"), "--phrasings must be 'templates' or 'grammar'"),
                  (self.positions in ("front_end", "simulator"), "--positions must be 'front_end' or 'simulator'"),
                  (self.positions == "front_end" or (self.freeze_vision and self.grounded_only and self.shift == 0),
                   "--positions simulator replaces the cached positions of a frozen front end: it needs "
                   "--freeze-vision --grounded-only --shift 0"),
                  (self.log_every > 0 and self.save_every > 0, "--log-every and --save-every must be > 0"),
                  (0 <= self.ema_decay < 1, "--ema-decay must be in [0, 1)")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def param_counts(model: VLA) -> dict:
    groups = {"vision": 0, "language": 0, "backbone": 0, "expert": 0, "stake": 0}
    for n, p in model.named_parameters():
        if n.startswith(("vit", "img_proj", "cam_emb", "kp_")):
            k = "vision"
        elif n.startswith(("lang_",)):
            k = "language"
        elif n.startswith(("blocks", "state_proj")):
            k = "backbone"
        elif n.startswith(("stage_", "keyframe_")):
            k = "stake"
        else:
            k = "expert"
        groups[k] += p.numel()
    groups["total"] = sum(groups.values())
    return groups


def format_counts(c: dict) -> str:
    return "params: " + ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in c.items())


# ----------------------------------------------------------------------------- flow matching

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
    return ModelConfig.from_dict({**base, "n_stage": n_stage, "keyframe_head": opts.keyframe_weight > 0})


def simulator_positions(D, cfg: ModelConfig, roles: list) -> torch.Tensor:
    """--positions simulator: (N, 2R) the positions recorded with the frames, normalised as the front end's head
    reports them (its roles, in its order)."""
    if D["positions"] is None:
        raise data.DataError(f"--positions simulator: {D['positions_why']}")
    if roles is None or D["position_roles"] != list(roles):
        raise data.DataError(f"--positions simulator: the data locates {D['position_roles']}, the front end {roles}")
    D["meta"]["ground_roles"] = list(roles)  # in the checkpoint: a --resume finds them there
    return (D["positions"] - torch.tensor(cfg.ground_mean)) / torch.tensor(cfg.ground_std)


def new_model(cfg: ModelConfig, seed: int) -> VLA:
    torch.manual_seed(seed)  # base weights depend on the seed only; StaKe parts use their own generator
    return VLA(cfg, seed=seed)


def make_optimizer(model, opts: Options):
    """AdamW (0.9, 0.95) as pi0; weight decay on weight matrices only (not norms, biases, embeddings, tokens).
    With --vision-lr-scale the front end's parameters form their own groups, whose "lr_scale" the loop applies."""
    no_decay = lambda n, p: p.dim() < 2 or any(s in n for s in ("query", "emb", "pos"))
    scale = lambda n: opts.vision_lr_scale if n.startswith(VISION_PREFIXES) else 1.0
    groups = []
    for s in dict.fromkeys((1.0, opts.vision_lr_scale)):  # one scale (two groups) unless --vision-lr-scale
        decay = [p for n, p in model.named_parameters() if not no_decay(n, p) and scale(n) == s]
        rest = [p for n, p in model.named_parameters() if no_decay(n, p) and scale(n) == s]
        groups += [{"params": decay, "weight_decay": opts.weight_decay, "lr_scale": s},
                   {"params": rest, "weight_decay": 0.0, "lr_scale": s}]
    return torch.optim.AdamW(groups, lr=opts.lr, betas=(0.9, 0.95), eps=1e-8,
                             foreach=True)  # one kernel per step for all tensors (the CPU default loops over them)


def lr_at(step: int, opts: Options) -> float:
    warm = max(1, min(opts.warmup, opts.steps // 10))
    if step <= warm:
        return opts.lr * step / warm
    p = (step - warm) / max(1, opts.steps - warm)
    return opts.lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * p)))


def language(tok: Tokenizer, texts, length: int):
    """(ids, mask) (E, L) of the episodes' instructions, trailing padding dropped (masked anyway; the Policy
    drops it too): fewer prefix tokens."""
    ids, mask = tok(texts, length)
    n = max(1, int(mask.sum(1).max()))
    return ids[:, :n], mask[:, :n]


def grammar_language(tok: Tokenizer, D: dict, length: int):
    """--phrasings grammar: (ids, mask) (E, N, L), every episode's N ways of asking (world.words), the objects of
    its layout (task, seed) filled in; an episode's list repeats to the longest one's N."""
    from world import words
    if None in D["ep_seeds"] or any(t not in words.GRAMMAR for t in D["ep_tasks"]):
        raise data.DataError(f"--phrasings grammar needs episodes of the simulated tasks with their layout seeds "
                             f"(these have tasks {sorted(set(D['ep_tasks']))})")
    lists = [words.of_layout(t, s) for t, s in zip(D["ep_tasks"], D["ep_seeds"])]
    n = max(map(len, lists))
    ids, mask = language(tok, [p[j % len(p)] for p in lists for j in range(n)], length)  # (E*N, L)
    return ids.unflatten(0, (len(lists), n)), mask.unflatten(0, (len(lists), n))


def ema_pairs_of(ema, model) -> tuple:
    """The (EMA, model) tensors that train: a frozen weight's EMA is the weight itself."""
    pairs = [(e, p) for e, p in zip(ema.parameters(), model.parameters()) if p.requires_grad]
    return [e for e, _ in pairs], [p for _, p in pairs]


@torch.no_grad()
def ema_update(pairs, decay: float) -> None:
    torch._foreach_lerp_(pairs[0], pairs[1], 1 - decay)


def save_checkpoint(path: Path, obj: dict) -> None:
    data.atomic_write_bytes(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def train_step(model, optimizer, batch, noise, t, opts: Options, amp: bool, share=None):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(batch, noise, t)
    if share is not None:  # torchrun: weighed so that the ranks' mean is the global batch's (see shard)
        out["policy_loss"] = out["policy_loss"] * share
    loss = out["policy_loss"]
    if "stage_loss" in out:
        loss = loss + opts.stage_weight * out["stage_loss"]      # StaKe
    if "keyframe_l1" in out:
        loss = loss + opts.keyframe_weight * out["keyframe_l1"]  # StaKe
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return out, loss, grad_norm


def shard(batch: dict, noise, t, rank: int, world: int):
    """torchrun: this rank's slice of the global batch, which every rank draws alike from the same generators, and
    its policy loss's share. That loss is a mean over the chunk steps that are valid, which slices hold unevenly:
    times world * (valid in the slice) / (valid in the batch), the ranks' mean (DDP's gradient, the logged loss) is
    the global batch's. The other losses are plain means over equal slices."""
    part = slice(rank * len(t) // world, (rank + 1) * len(t) // world)
    mine = {k: v[part] for k, v in batch.items()}                                 # every entry is (B, ...)
    share = world * mine["action_valid"].sum() / batch["action_valid"].sum()
    return mine, noise[part], t[part], share


# ----------------------------------------------------------------------------- training

def sources(opts: Options):
    """The checkpoints this run starts from: (resume, src, grounding). `src` is --resume's or --init-from's
    checkpoint (its architecture, tokenizer and statistics are reused), `grounding` --vision-from's."""
    ck_path = Path(opts.out) / "ckpt.pt"
    resume = load_checkpoint(ck_path) if opts.resume and ck_path.is_file() else None
    if opts.resume and resume is None:
        print(f"--resume: no {ck_path} yet, starting fresh")
    if resume is not None:
        same = {k: v for k, v in dataclasses.asdict(opts).items() if k not in ("resume", "stop_after", "device", "threads")}
        defaults = {f.name: getattr(Options(), f.name) for f in dataclasses.fields(Options)}  # options added later
        was = {k: resume["options"].get(k, defaults[k]) for k in same}
        if diff := {k: (was[k], same[k]) for k in same if was[k] != same[k]}:
            raise ValueError(f"--resume: options differ from {ck_path} (was, now): {diff}")
    src = resume or (load_checkpoint(opts.init_from) if opts.init_from else None)
    grounding = load_checkpoint(opts.vision_from) if opts.vision_from and resume is None else None
    if grounding is not None and grounding.get("kind") != "grounding":
        raise ValueError(f"--vision-from {opts.vision_from}: not a ground.py checkpoint (use --init-from for a policy)")
    return resume, src, grounding


def load_data(opts: Options, src):
    """The demonstrations (dataset.load_folders), validated against `src`. With a frozen front end that only
    reports positions and no image augmentation, the images are read once, for the cache (grounded_positions):
    returns (D, cached)."""
    cached = opts.freeze_vision and opts.shift == 0 and (src["model_config"].get("grounded_only") if src else
                                                         opts.grounded_only)
    D = dataset.load_folders(opts.data, opts.cameras or (src["meta"]["cameras"] if src else None), opts.stage_label,
                             images=not cached)
    if src is not None and bool(src["meta"].get("velocity")) != opts.velocity:
        raise ValueError(f"--velocity must match the checkpoint, which was trained "
                         f"{'with' if src['meta'].get('velocity') else 'without'} it ({opts.init_from or Path(opts.out) / 'ckpt.pt'})")
    if opts.velocity:
        D["qpos_prev"] = dataset.previous_qpos(D)
        D["meta"]["velocity"] = True
    return D, cached


def configure(opts: Options, D: dict, src, grounding):
    """(tokenizer, normalisation statistics, ModelConfig): the checkpoint's (--init-from, --resume), the grounding
    run's front end with everything that acts new (--vision-from), or a preset from scratch."""
    meta, A, Dq = D["meta"], D["action"].shape[1], D["qpos"].shape[1] * (2 if opts.velocity else 1)
    if src is not None:
        mc = src["model_config"]
        if (mc["action_dim"], mc["state_dim"]) != (A, Dq):
            raise data.DataError(f"action/qpos dimension {A}/{Dq} of {opts.data} disagrees with the checkpoint's "
                                 f"{mc['action_dim']}/{mc['state_dim']} ({opts.init_from or Path(opts.out) / 'ckpt.pt'})")
        if mc["n_cameras"] != len(D["cameras"]):
            raise data.DataError(f"{len(D['cameras'])} cameras {D['cameras']} but the checkpoint has {mc['n_cameras']}")
        return Tokenizer(src["tokenizer"]), src["stats"], model_config(opts, D, mc)
    if grounding is not None:
        gc, gm = grounding["model_config"], grounding["meta"]
        if tuple(gc["image_size"]) != tuple(meta["image_size"]):
            raise data.DataError(f"image size {list(meta['image_size'])} of {', '.join(opts.data)} differs from the "
                                 f"grounding checkpoint's {list(gc['image_size'])} ({opts.vision_from})")
        if opts.grounded and D["cameras"] != gm["cameras"]:
            raise data.DataError(f"--grounded reads the keypoints of cameras {gm['cameras']} in that "
                                 f"order ({opts.vision_from}); this run has {D['cameras']} (set --cameras)")
        if unseen := [c for c in D["cameras"] if c not in gm["cameras"]]:
            print(f"warning: camera(s) {unseen} were not in grounding ({gm['cameras']})", file=sys.stderr)
        g = opts.grounded
        return Tokenizer(grounding["tokenizer"]), dataset.compute_stats(D), model_config(opts, D, {
            **gc, "use_state": True, "action_dim": A, "state_dim": Dq, "n_cameras": len(D["cameras"]),
            "grounded": grounding["head"]["bias"].shape[0] if g else 0, "grounded_only": opts.grounded_only,
            "ground_distances": opts.object_distances, "object_tokens": opts.object_tokens,
            "ground_mean": gm["target_mean"] if g else (), "ground_std": gm["target_std"] if g else (),
            "state_in": opts.state_in})
    tok = Tokenizer(train_tokenizer(sorted(set(D["texts"])), PRESETS[opts.preset]["vocab_size"]))  # from scratch
    return tok, dataset.compute_stats(D), model_config(opts, D, dataclasses.asdict(ModelConfig.from_preset(
        opts.preset, action_dim=A, state_dim=Dq, n_cameras=len(D["cameras"]),
        image_size=tuple(meta["image_size"]), vocab_size=tok.vocab_size, state_in=opts.state_in)))


def load_weights(model: VLA, opts: Options, src, resume, grounding) -> None:
    """--init-from: the EMA weights, strict for the base (StaKe heads the checkpoint lacks start fresh);
    --resume: everything, strict; --vision-from: the front end (and with --grounded its head)."""
    if src is not None:
        sd = src["ema"] if resume is None and src.get("ema") is not None else src["model"]
        allowed = (lambda k: False) if resume is not None else (lambda k: k.startswith(("stage_", "keyframe_")))
        own = model.state_dict()  # a StaKe head of another shape (per-arm vs any) starts fresh
        sd = {k: v for k, v in sd.items() if not (allowed(k) and k in own and own[k].shape != v.shape)}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if bad := [k for k in missing + unexpected if not allowed(k)]:
            raise ValueError(f"checkpoint does not fit the model (missing or unexpected): {bad}")
        if missing or unexpected:
            print(f"init-from: fresh StaKe parameters {missing}, dropped {unexpected}")
    if grounding is not None:
        own, sd = model.state_dict(), dict(grounding["vision"])
        if opts.grounded:  # ground.py keeps its head apart from the model; here it is model.ground_head
            sd |= {f"ground_head.{k}": v for k, v in grounding["head"].items()}
        if bad := [k for k, v in sd.items() if k not in own or own[k].shape != v.shape]:
            raise ValueError(f"--vision-from {opts.vision_from}: weights that do not fit the model: {bad}")
        model.load_state_dict(sd, strict=False)
    if opts.freeze_vision:  # requires_grad off: AdamW skips a parameter without a gradient (no step, no decay)
        for n, p in model.named_parameters():
            if n.startswith(VISION_PREFIXES):
                p.requires_grad_(False)


def build(opts: Options) -> dict:
    """Everything the loop needs: data, model, EMA, optimiser, generators, step; resumed where --resume finds
    a checkpoint. Seeding is one block; the data generator depends on the seed alone."""
    resume, src, grounding = sources(opts)
    random.seed(opts.seed), np.random.seed(opts.seed), torch.manual_seed(opts.seed)
    g_data, g_flow = torch.Generator().manual_seed(opts.seed), torch.Generator().manual_seed(opts.seed + 1)
    device = torch.device("cuda" if opts.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if opts.device == "auto" else opts.device))
    if distributed()[2] > 1 and not dist.is_initialized():  # torchrun: a GPU per process, or a share of the CPU
        if device.type == "cuda":
            device = torch.device("cuda", distributed()[1])
            torch.cuda.set_device(device)
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")  # CPU tensors by gloo
    if device.type == "cuda":  # bf16 autocast on CUDA; fp32 on the CPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.set_num_threads(opts.threads or cpu_threads())
    D, cached = load_data(opts, src)
    tok, stats, cfg = configure(opts, D, src, grounding)
    if src is not None and src["meta"]["action_names"] != D["meta"]["action_names"]:
        print(f"warning: action names differ from the checkpoint's: {src['meta']['action_names']}", file=sys.stderr)
    lang = language(tok, D["texts"], cfg.lang_len)                                     # (E, L) ids, mask
    if (long := [t for t in set(D["texts"]) if len(tok.ids(t)) > cfg.lang_len]):
        print(f"warning: {len(long)} instruction(s) longer than {cfg.lang_len} tokens are truncated", file=sys.stderr)
    scene = {k: v.to(device) for k, v in dataset.scene_augmentation(D["meta"]).items()} if opts.symmetry else None
    D["meta"]["tasks"] = {**(src["meta"].get("tasks", {}) if src else {}), **D["meta"]["tasks"]}
    model = new_model(cfg, opts.seed).to(device)
    load_weights(model, opts, src, resume, grounding)
    if cached and opts.positions == "simulator":
        D["ground"] = simulator_positions(D, cfg, grounding["meta"]["roles"] if grounding else src["meta"].get("ground_roles"))
    elif cached:  # from each episode's own instruction, whatever --phrasings
        D["ground"] = dataset.grounded_positions(model, D, opts.data, lang, device)
    if opts.phrasings == "grammar":
        lang = grammar_language(tok, D, cfg.lang_len)                                 # (E, N, L) ids, mask
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = make_optimizer(model, opts)
    step = 0
    if resume is not None:
        ema.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        step = resume["step"]
        g_data.set_state(resume["rng"]["data"]), g_flow.set_state(resume["rng"]["flow"])
        torch.set_rng_state(resume["rng"]["torch"])
    task = "+".join(sorted(set(D["ep_tasks"])))[:60] or "data"
    return dict(D=D, tok=tok, stats=stats, cfg=cfg, lang=lang, norm=Normalizer(stats, device), scene=scene,
                model=model, ema=ema, optimizer=optimizer, step=step, g_data=g_data, g_flow=g_flow, device=device,
                run=f"{task}__ss{opts.stage_weight:g}_ks{opts.keyframe_weight:g}__{opts.seed}")


@contextlib.contextmanager
def interruptible():
    """Ctrl-C asks the loop to stop at the end of its step, where it saves a checkpoint (a second Ctrl-C stops at
    once). Yields a function: has a stop been asked?"""
    asked = []

    def handler(sig, frame):
        if asked:
            raise KeyboardInterrupt
        asked.append(True)
    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C is not ours to catch
        old = None
    try:
        yield lambda: bool(asked)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def batch_metrics(out: dict, batch: dict, loss, grad_norm, stage_label: str, high: bool) -> dict:
    """One step's figures for metrics.jsonl (tensors; read back only when logging). stage_acc_threshold: a
    threshold on the measured gripper opening as a stage classifier, the baseline for the stage head."""
    grip = batch["gripper_qpos"]
    closed = (grip < STAGE_THRESHOLD) if high else (grip > 1 - STAGE_THRESHOLD)
    closed = closed.any(1, keepdim=True) if stage_label == "any" else closed
    m = dict(loss=loss, policy_loss=out["policy_loss"], grad_norm=grad_norm,
             stage_acc_threshold=(closed.float() == batch["stage"]).float().mean())
    if "stage_loss" in out:
        m["stage_loss"] = out["stage_loss"]
        m["stage_acc"] = ((out["stage_logits"] > 0).float() == batch["stage"]).float().mean()
    if "keyframe_l1" in out:
        m["keyframe_l1"] = out["keyframe_l1"]
    return m


def train(opts: Options) -> dict:
    b = build(opts)
    D, cfg, model, ema, optimizer, step, run = b["D"], b["cfg"], b["model"], b["ema"], b["optimizer"], b["step"], b["run"]
    out_dir, amp = Path(opts.out), b["device"].type == "cuda"
    rank, _, world = distributed()
    lead = rank == 0  # under torchrun, rank 0 alone prints and writes (checkpoints, metrics, plot)
    # DDP averages the gradients in backward; static_graph: the parameters a forward leaves unused (the last backbone
    # block's without StaKe heads, the keypoint tokens' with --grounded-only) are the same every step, and keep no grad
    net = model if world == 1 else DistributedDataParallel(model, static_graph=True)
    warnings.filterwarnings("ignore", "Grad strides do not match")  # DDP: the StaKe queries' grads, slices of one cat
    if lead:
        print(f"run {run} on {b['device']}{f' x {world} processes' if world > 1 else ''} | {len(D['texts'])} "
              f"episodes, {len(D['action'])} steps, cameras {D['cameras']}")
        print(f"{format_counts(param_counts(model))} | vocab {b['tok'].vocab_size} | start step {step}")

    def checkpoint(s):
        save_checkpoint(out_dir / "ckpt.pt", dict(
            model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(), step=s,
            options=dataclasses.asdict(opts), model_config=dataclasses.asdict(cfg), stats=b["stats"],
            tokenizer=b["tok"].proto, meta=D["meta"], git=data.git_revision(), run=run,
            rng=dict(data=b["g_data"].get_state(), flow=b["g_flow"].get_state(), torch=torch.get_rng_state())))

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    if lead:
        kept = [l for l in metrics_path.read_text().splitlines() if json.loads(l)["step"] <= step] if (
            step and metrics_path.exists()) else []
        metrics_path.write_text("".join(l + "\n" for l in kept))
    acc, t_log, t_bar, t_save, first, last = {}, time.perf_counter(), 0.0, time.perf_counter(), step, {}
    high, ema_pairs = segment.open_is_high(D["meta"]["gripper_convention"]), ema_pairs_of(ema, model)
    tty = sys.stderr.isatty()  # a bar redrawn in place; in a log, a line every 30 s
    with interruptible() as interrupted:
        while step < opts.steps:
            step += 1
            lr = lr_at(step, opts)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # --vision-lr-scale (make_optimizer)
            batch = dataset.make_batch(D, b["lang"], b["norm"], b["g_data"], opts.batch_size, cfg, opts.shift, b["device"],
                                       b["scene"])
            noise, t = sample_noise_time(b["g_flow"], opts.batch_size, cfg.horizon, cfg.action_dim, b["device"])
            batch, noise, t, share = shard(batch, noise, t, rank, world) if world > 1 else (batch, noise, t, None)
            out, loss, gn = train_step(net, optimizer, batch, noise, t, opts, amp, share)
            ema_update(ema_pairs, min(opts.ema_decay, (1 + step) / (10 + step)))
            for k, v in batch_metrics(out, batch, loss, gn, opts.stage_label, high).items():
                acc[k] = acc.get(k, 0.0) + v.detach().float()
            stop = (opts.stop_after and step - first >= opts.stop_after) or interrupted()
            if world > 1:  # the ranks stop at the same step (a Ctrl-C may reach them during different ones)
                flag = torch.tensor(float(bool(stop)))
                dist.all_reduce(flag, dist.ReduceOp.MAX)
                stop = bool(flag)
            if step % opts.log_every == 0 or step == opts.steps or stop:
                n_steps, dt = step - (last.get("step") or first), time.perf_counter() - t_log
                if world > 1:  # the ranks' mean: each saw an equal slice of the batch
                    mean = torch.stack(list(acc.values())) / world
                    dist.all_reduce(mean)
                    acc = dict(zip(acc, mean))
                last = {"step": step, **{k: round(float(v) / n_steps, 6) for k, v in acc.items()}, "lr": lr,
                        "samples_per_s": round(n_steps * opts.batch_size / dt, 2)}
                if lead:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(last) + "\n")
                acc, t_log = {}, time.perf_counter()
            if lead and (step % opts.save_every == 0 or step == opts.steps or stop or
                         time.perf_counter() - t_save > SAVE_SECONDS):
                t_save = time.perf_counter()
                checkpoint(step)
            if lead and (time.perf_counter() - t_bar > (0.25 if tty else 30) or step == opts.steps or stop):
                t_bar = time.perf_counter()
                done = int(30 * step / opts.steps)
                extra = " ".join(f"{k} {last[k]:.3f}" for k in ("policy_loss", "stage_acc", "keyframe_l1") if k in last)
                line = (f"{run} {step}/{opts.steps} [{'#' * done}{'.' * (30 - done)}] {extra} "
                        f"{last.get('samples_per_s', 0):.0f} samples/s ")
                print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
            if stop:
                break
        if tty and lead:
            print(file=sys.stderr)
        if interrupted():
            raise KeyboardInterrupt(f"interrupted at step {step}, saved in {out_dir / 'ckpt.pt'}")
    if world > 1:
        dist.barrier()  # the ranks leave together, after rank 0's last checkpoint (what a next run would resume)
    if step == opts.steps and lead:
        import plots
        plots.loss_curves([json.loads(l) for l in metrics_path.read_text().splitlines() if l.strip()],
                          out_dir / "loss.png")
    return last


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        train(data.parse_options(Options, argv, "train.py", __doc__.split("\n")[0]))
    except (data.DataError, ValueError, FileNotFoundError) as e:
        print(f"\ntrain.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\ntrain.py: {e or 'interrupted'}; rerun the same command (with --resume) to continue", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
