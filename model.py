"""The small VLA: a from-scratch ViT + transformer backbone, a flow-matching action expert (pi0 recipe),
the StaKe stage / keyframe heads, and the `Policy` wrapper shared by simulation and robot evaluation.

Token layout and attention (True = row may attend to column):

                 prefix (images, language, state)   StaKe queries      [state]       action tokens
  prefix         bidirectional (lang padding off)   no                 no            no
  StaKe queries  yes                                itself only        no            no
  [state]        yes                                no                 itself        no
  action tokens  yes                                no                 yes           bidirectional

The state token is in the prefix (state_in="prefix", the default) or, as in pi0, first in the action expert's
suffix ([state], state_in="expert"), where the StaKe queries cannot read it.

The prefix is encoded once by the backbone and its per-layer keys/values are cached. The StaKe queries
(backbone weights) and the action tokens (action-expert weights) are separate suffix passes that read
that cache, so removing the queries cannot change the actions: the action pass never sees them.

Deviations from pi0 (openpi), on purpose:
  1. Small from-scratch networks instead of PaliGemma: a pre-norm backbone with LayerNorm + GELU MLP (not
     RMSNorm + GeGLU), learned positions (not RoPE), a BPE tokenizer of the dataset's instructions. The images,
     and what replaces VLM pretraining (grounding on rendered layouts, ground.py), are frontend.py's.
  2. By default the state token sits in the prefix, bidirectional with images and language, so the StaKe
     queries read it; state_in="expert" puts it where pi0 does (first in the suffix, its own attention block,
     the expert's weights), recomputed at each Euler step (pi0 too; its keys could be cached).
  3. Horizon 20 (1 s at 20 Hz; pi0: 50), executing 10 steps per chunk; 96 px images (pi0: 224).
  4. The expert has the backbone's depth (as in pi0) and its own width; its attention runs at the
     backbone's width so the two streams share keys/values per layer (pi0 shares head count and size).
  5. Normalisation: z-score with a floor on the std (dataset.py), not std + 1e-6 or quantiles.
  6. Augmentation is a random shift (pad + crop, dataset.py); pi0 uses crop 95 % + resize, rotation, colour.
  7. The prefix's last backbone layer only computes keys/values (its output is never read), and the Policy
     drops trailing language padding before encoding (masked either way; fewer tokens on a CPU).
  8. With keypoints, the front end's `direct` features are added to every action token (`kp_direct`).
  9. The Policy snaps each gripper output to 0 or 1 before a chunk leaves (pi0 sends its continuous output):
     the demonstrations command only those two, and a partly closed gripper in the state reads as a close under
     way. Optional (train.py --velocity): the state also holds qpos[t] - qpos[t-1] (pi0's state is qpos alone).
Presets: `small` (depth 3, expert half as wide) keeps one chunk near 15-20 ms on 2 CPU cores; `base` is for a GPU.
Kept from pi0: t = 1 is noise, x_t = t * noise + (1 - t) * actions, target u = noise - actions, MSE loss;
t ~ Beta(1.5, 1) * 0.999 + 0.001; sine-cosine time embedding (periods 4e-3 .. 4) concatenated to each action
token and mixed by Linear, swish, Linear; 10 Euler steps from t = 1 with dt = -0.1; action tokens bidirectional;
AdamW (0.9, 0.95), clip 1.0, warm-up + cosine, EMA (train.py). Chunk steps past an episode's end are masked
from the loss (as LeRobot's pi0 port). From scratch: peak lr 3e-4 (pi0 fine-tunes at 2.5e-5), EMA 0.999 (0.99).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from frontend import VISION_PREFIXES, FrontEnd, Tokenizer, check_config, images_to_input, train_tokenizer  # noqa: F401

STAKE_SEED_OFFSET = 7919  # StaKe: heads and queries draw from Generator(seed + this), never the global RNG

# ModelConfig fields of retired options (notebooks-2026-12-07:docs/experiments.md) and the values that meant "off"
RETIRED_OFF = {"image_pos": (False,)}

PRESETS = {  # architecture only; training options live in train.py
    "tiny": dict(patch_size=16, vit_width=64, vit_depth=2, vit_heads=2, width=64, depth=2, heads=2,
                 expert_width=64, horizon=10, n_action_steps=5, lang_len=24, vocab_size=512),
    "small": dict(patch_size=16, vit_width=128, vit_depth=4, vit_heads=4, width=128, depth=3, heads=4,
                  expert_width=64, horizon=20, n_action_steps=10, lang_len=24, vocab_size=512),
    "base": dict(patch_size=12, vit_width=384, vit_depth=6, vit_heads=6, width=384, depth=8, heads=6,
                 expert_width=256, horizon=20, n_action_steps=10, lang_len=32, vocab_size=1024),
}


@dataclass
class ModelConfig:
    action_dim: int                      # A, e.g. 14 for the bimanual scene
    state_dim: int                       # D (qpos)
    n_cameras: int                       # cameras fed to the shared ViT (0 = no images, for toy tests)
    image_size: tuple = (96, 96)         # (H, W) the ViT sees; other sizes are resized on the device
    patch_size: int = 16
    vit_width: int = 128
    vit_depth: int = 4
    vit_heads: int = 4
    vit_stem: str = "patch"              # the front end's options (frontend.py): "patch" or "conv"
    vit_pos: str = "learned"             # "learned" (timm) or "sincos" (fixed)
    keypoints: int = 0                   # K > 0: K keypoint tokens per camera replace the patch tokens
    kp_word_order: bool = False          # the instruction steering the keypoints passes one attention layer
    grounded: int = 0                    # 2R > 0: the (x, y) of R named objects, read from the keypoints
    grounded_only: bool = False          # the policy sees those positions and not the keypoints
    ground_mean: tuple = ()              # world (x, y) = position * ground_std + ground_mean
    ground_std: tuple = ()
    ground_distances: bool = False       # the R(R-1)/2 distances between the objects join them
    object_tokens: bool = False          # one token per object, read by attention only
    width: int = 128                     # backbone width = attention width of every stream
    depth: int = 4                       # backbone depth = action-expert depth
    heads: int = 4
    expert_width: int = 128
    mlp_ratio: float = 4.0
    horizon: int = 20                    # H, actions per chunk
    n_action_steps: int = 10             # executed per chunk before querying again
    lang_len: int = 24                   # language tokens (padded, masked)
    vocab_size: int = 512                # set to the trained tokenizer's real size
    num_steps: int = 10                  # Euler steps at inference
    use_state: bool = True               # joint state token (False: images + language only)
    state_in: str = "prefix"             # where it enters: "prefix" or "expert" (pi0: the suffix; StaKe cannot see it)
    n_stage: int = 0                     # StaKe: stage logits (arms, or 1 for --stage-label any); 0 = no stage head
    keyframe_head: bool = False          # StaKe: keyframe head present

    def __post_init__(self):
        self.image_size = tuple(int(s) for s in self.image_size)
        self.ground_mean, self.ground_std = tuple(map(float, self.ground_mean)), tuple(map(float, self.ground_std))
        H, W = self.image_size
        checks = [
            (self.action_dim > 0 and self.state_dim > 0, "action_dim and state_dim must be > 0"),
            (self.n_cameras >= 0, "n_cameras must be >= 0"),
            (H % self.patch_size == 0 and W % self.patch_size == 0,
             f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}"),
            (self.width % self.heads == 0, f"width {self.width} not divisible by heads {self.heads}"),
            (self.vit_width % self.vit_heads == 0, f"vit_width {self.vit_width} not divisible by vit_heads"),
            (1 <= self.n_action_steps <= self.horizon, "need 1 <= n_action_steps <= horizon"),
            (self.depth >= 1 and self.num_steps >= 1 and self.lang_len >= 1, "depth, num_steps, lang_len >= 1"),
            (self.n_stage >= 0, "n_stage must be >= 0"),
            (self.state_in in ("prefix", "expert"), f"state_in must be 'prefix' or 'expert', not '{self.state_in}'"),
        ]
        for ok, msg in checks + check_config(self):  # + the front end's (frontend.py)
            if not ok:
                raise ValueError(f"ModelConfig: {msg}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "checkpoint") -> "ModelConfig":
        """The config a checkpoint stored. Options retired since are dropped where they were off; a checkpoint that
        used one needs the revision that still has it (notebooks-2026-12-07:docs/experiments.md names it)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if used := {k: v for k, v in d.items() if k not in known and v not in RETIRED_OFF.get(k, ())}:
            raise ValueError(f"{source}: made with option(s) {used} that this version no longer has "
                             f"(notebooks-2026-12-07:docs/experiments.md names the revision that runs them)")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_preset(cls, preset: str, **kw) -> "ModelConfig":
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}' (choose from {sorted(PRESETS)})")
        return cls(**{**PRESETS[preset], **kw})


# ----------------------------------------------------------------------------- building blocks

class Block(nn.Module):
    """Pre-norm transformer block whose attention may also read cached keys/values of another stream.

    `dim` is the width of this stream; `attn_dim` the shared attention width (heads * head size)."""

    def __init__(self, dim: int, attn_dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * attn_dim)
        self.proj = nn.Linear(attn_dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def project(self, x):  # (B, N, dim) -> q, k, v each (B, heads, N, head)
        B, N, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return q, k, v

    def finish(self, x, q, k, v, mask):  # mask (B, 1, N, N_keys) bool; k, v may hold a cached prefix
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))  # (B, heads, N, head)
        x = x + self.proj(a.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))


def sincos_time(t: torch.Tensor, dim: int, min_period=4e-3, max_period=4.0) -> torch.Tensor:
    """pi0 time embedding: (B,) -> (B, dim), sine and cosine at periods geometric in [min, max]."""
    frac = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** frac
    x = t.float()[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(x), torch.cos(x)], dim=-1)


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """bool (True = may attend) -> float 0 / -inf, built once and shared by all layers (and Euler steps)."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


def _init(m: nn.Module, generator=None):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02, generator=generator)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02, generator=generator)


# ----------------------------------------------------------------------------- the model

class VLA(FrontEnd):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        W, We, A = cfg.width, cfg.expert_width, cfg.action_dim
        if cfg.n_cameras:  # vision (frontend.py): a ViT shared by the cameras -> patch or keypoint tokens
            self.build_vision(cfg, Block)
        # language and state
        self.lang_emb = nn.Embedding(cfg.vocab_size, W)
        self.lang_pos = nn.Parameter(torch.zeros(cfg.lang_len, W))
        if cfg.use_state:  # a token of the prefix (backbone width) or of the expert's suffix (its width)
            self.state_proj = nn.Linear(cfg.state_dim, W if cfg.state_in == "prefix" else We)
        self.blocks = nn.ModuleList(Block(W, W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        # action expert (pi0: action + time -> Linear, swish, Linear)
        self.action_in = nn.Linear(A, We)
        self.time_mlp_in = nn.Linear(2 * We, We)
        self.time_mlp_out = nn.Linear(We, We)
        self.action_pos = nn.Parameter(torch.zeros(cfg.horizon, We))
        self.expert = nn.ModuleList(Block(We, W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.expert_norm = nn.LayerNorm(We)
        self.action_out = nn.Linear(We, A)
        for name, m in self.named_modules():
            if not name.startswith("vit"):  # timm initialises its own ViT
                _init(m)
        for p in (self.lang_pos, self.action_pos) + self.vision_tokens():
            nn.init.trunc_normal_(p, std=0.02)

        # StaKe: two learnable query tokens (backbone weights) and their heads, created only when enabled,
        # initialised from their own generator and without touching the global RNG, so the base weights
        # of the four variants of one seed are identical.
        with torch.random.fork_rng(devices=[]):
            g = torch.Generator().manual_seed(seed + STAKE_SEED_OFFSET)
            if cfg.n_stage:
                self.stage_query = nn.Parameter(torch.randn(1, 1, W, generator=g) * 0.02)
                self.stage_head = nn.Sequential(nn.LayerNorm(W), nn.Linear(W, cfg.n_stage))
                self.stage_head.apply(lambda m: _init(m, g))
            if cfg.keyframe_head:
                self.keyframe_query = nn.Parameter(torch.randn(1, 1, W, generator=g) * 0.02)
                self.keyframe_head = nn.Sequential(nn.LayerNorm(W), nn.Linear(W, A))
                self.keyframe_head.apply(lambda m: _init(m, g))

    # ---- prefix
    def embed_instruction(self, lang_ids):
        """(B, L) token ids -> (B, L, W): word embedding + position. The backbone's instruction tokens and the
        keypoint detectors' language shift both read it (ground.py too)."""
        return self.lang_emb(lang_ids) + self.lang_pos[:lang_ids.shape[1]]

    def encode_prefix(self, images, lang_ids, lang_mask, state, ground_matrix=None, ground_offset=None, ground=None):
        """images (B, C, 3, H, W) in [-1, 1]; lang_ids, lang_mask (B, L); state (B, D) normalised; the ground_*
        arguments are training's (frontend.FrontEnd.embed_images). Returns the per-layer (k, v) cache, each
        (B, heads, P, head), and the key validity (B, P); with the front end's `direct` features, one more cache
        entry after the layers holds them (B, F)."""
        B = state.shape[0]
        parts, valid, extra = [], [], []
        lang = self.embed_instruction(lang_ids)                             # (B, L, W)
        if self.cfg.n_cameras:  # frontend.py
            x, direct = self.embed_images(images, lang, lang_mask, ground_matrix, ground_offset, ground)
            extra += [direct] if direct is not None else []
            parts.append(x)
            valid.append(torch.ones(B, x.shape[1], dtype=torch.bool, device=state.device))
        parts.append(lang)
        valid.append(lang_mask.bool())
        if self.cfg.use_state and self.cfg.state_in == "prefix":
            parts.append(self.state_proj(state)[:, None])                   # (B, 1, W)
            valid.append(torch.ones(B, 1, dtype=torch.bool, device=state.device))
        x, valid = torch.cat(parts, 1), torch.cat(valid, 1)                 # (B, P, W), (B, P)
        mask = additive_mask(valid[:, None, None, :])                       # (B, 1, 1, P) keys
        cache = []
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.project(x)
            cache.append((k, v))
            if i < len(self.blocks) - 1:  # the last layer's prefix output is never read
                x = blk.finish(x, q, k, v, mask)
        return cache + extra, valid  # with keypoints, one entry past the layers: their coordinates (B, C*K*2)

    @staticmethod
    def suffix_mask(valid, self_mask):
        """Suffix rows see the valid prefix keys, and each other as `self_mask` (S, S) allows."""
        B, S = valid.shape[0], self_mask.shape[0]
        return additive_mask(torch.cat([valid[:, None, None, :].expand(B, 1, S, valid.shape[1]),
                                        self_mask[None, None].expand(B, 1, S, S)], dim=-1))  # (B, 1, S, P + S)

    @staticmethod
    def _suffix(blocks, x, cache, mask):
        """Suffix tokens x (B, S, w) through `blocks`, reading the cached prefix and each other as `mask` allows;
        the prefix never reads the suffix (zip stops at the last block: a `direct` entry is not read here)."""
        for blk, (kp, vp) in zip(blocks, cache):
            q, k, v = blk.project(x)
            x = blk.finish(x, q, torch.cat([kp, k], 2), torch.cat([vp, v], 2), mask)
        return x

    # ---- action expert
    def expert_state(self) -> bool:  # state_in="expert": the suffix starts with the state token
        return self.cfg.use_state and self.cfg.state_in == "expert"

    def action_mask(self, valid, H: int):
        """The suffix mask of velocity: action tokens see each other and the state token; it sees itself only."""
        S = H + self.expert_state()
        self_mask = torch.ones(S, S, dtype=torch.bool, device=valid.device)  # (S, S)
        if self.expert_state():
            self_mask[0, 1:] = False                                         # the state does not read the actions
        return self.suffix_mask(valid, self_mask)

    def velocity(self, cache, valid, x_t, t, mask=None, state=None):
        """x_t (B, H, A) noisy normalised actions, t (B,), state (B, D) (read with state_in="expert") -> predicted
        velocity (B, H, A). Action tokens see the prefix and each other (pi0); `mask` may be passed in to reuse it."""
        H = x_t.shape[1]
        a = self.action_in(x_t)                                              # (B, H, We)
        te = sincos_time(t, a.shape[-1]).to(a.dtype)[:, None].expand(-1, H, -1)
        a = self.time_mlp_out(F.silu(self.time_mlp_in(torch.cat([a, te], -1)))) + self.action_pos[:H]
        if len(cache) > len(self.expert):  # keypoints: their coordinates reach every action token directly
            a = a + self.kp_direct(cache[len(self.expert)])[:, None]
        if self.expert_state():  # pi0: the state token first in the suffix
            a = torch.cat([self.state_proj(state)[:, None], a], 1)           # (B, 1 + H, We)
        a = self._suffix(self.expert, a, cache, self.action_mask(valid, H) if mask is None else mask)
        return self.action_out(self.expert_norm(a[:, -H:]))

    @torch.no_grad()
    def sample(self, images, lang_ids, lang_mask, state, noise):
        """10 Euler steps from noise at t = 1 to actions at t = 0; the prefix is encoded once."""
        cache, valid = self.encode_prefix(images, lang_ids, lang_mask, state)
        x, dt = noise, -1.0 / self.cfg.num_steps
        mask = self.action_mask(valid, x.shape[1])
        for i in range(self.cfg.num_steps):
            t = torch.full((x.shape[0],), 1.0 + i * dt, device=x.device)
            x = x + dt * self.velocity(cache, valid, x, t, mask, state)
        return x

    # ---- StaKe
    def stake(self, cache, valid) -> dict:
        """StaKe: query tokens read the prefix through the backbone; returns the heads' raw outputs."""
        names = [n for n in ("stage", "keyframe") if hasattr(self, n + "_query")]
        if not names:
            return {}
        B = valid.shape[0]
        q = torch.cat([getattr(self, n + "_query") for n in names], 1).expand(B, -1, -1)  # (B, Q, W)
        eye = torch.eye(len(names), dtype=torch.bool, device=q.device)  # each query sees the prefix and itself
        out = self._suffix(self.blocks, q, cache, self.suffix_mask(valid, eye))  # (B, Q, W)
        return {n: getattr(self, n + "_head")(out[:, i]) for i, n in enumerate(names)}

    # ---- training losses
    def forward(self, batch: dict, noise: torch.Tensor, t: torch.Tensor) -> dict:
        """batch: images, lang_ids, lang_mask, state, actions (B, H, A) normalised, action_valid (B, H),
        stage (B, n_stage) 0/1 and keyframe (B, A) normalised when the heads exist.
        noise (B, H, A) ~ N(0, I); t (B,) in (0, 1]. Returns the losses (scalars) and the stage logits."""
        cache, valid = self.encode_prefix(batch.get("images"), batch["lang_ids"], batch["lang_mask"], batch["state"],
                                          batch.get("ground_matrix"), batch.get("ground_offset"), batch.get("ground"))
        a, tt = batch["actions"], t[:, None, None]
        x_t = tt * noise + (1 - tt) * a                                      # t = 1 noise, t = 0 data
        u = noise - a
        v = self.velocity(cache, valid, x_t, t, state=batch["state"])
        m = batch["action_valid"].to(v.dtype)                                # (B, H): padded steps off
        per_step = ((v.float() - u.float()) ** 2).mean(-1)                   # (B, H)
        out = {"policy_loss": (per_step * m).sum() / m.sum().clamp(min=1)}
        heads = self.stake(cache, valid)                                     # StaKe: the auxiliary losses
        if "stage" in heads:
            logits = heads["stage"].float()
            out["stage_logits"] = logits
            out["stage_loss"] = F.binary_cross_entropy_with_logits(logits, batch["stage"].float())
        if "keyframe" in heads:
            out["keyframe_l1"] = (heads["keyframe"].float() - batch["keyframe"].float()).abs().mean()
        return out


# ----------------------------------------------------------------------------- the policy (sim and robot)

class Normalizer:
    """z-score with the floor already applied to the stored std (stats come from train.py)."""

    def __init__(self, stats: dict, device="cpu"):
        f = lambda k: torch.as_tensor(stats[k], dtype=torch.float32, device=device)
        self.qm, self.qs, self.am, self.as_ = f("qpos_mean"), f("qpos_std"), f("action_mean"), f("action_std")

    def state(self, q):
        return (q - self.qm) / self.qs

    def action(self, a):
        return (a - self.am) / self.as_

    def unaction(self, a):
        return a * self.as_ + self.am

class Policy:
    """Everything evaluation needs, rebuilt from one checkpoint: model, tokenizer, normalisation, names."""

    def __init__(self, model: VLA, tokenizer: Tokenizer, stats: dict, meta: dict, device="cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.norm = Normalizer(stats, self.device)
        self.meta = meta
        self.fps = float(meta["fps"])
        self.action_names = list(meta["action_names"])
        self.qpos_names = list(meta["qpos_names"])
        self.gripper_indices = [int(i) for i in meta["gripper_indices"]]
        self.cameras = list(meta["cameras"])
        self.image_size, self.horizon, self.n_action_steps = self.cfg.image_size, self.cfg.horizon, self.cfg.n_action_steps
        self._queue: list[np.ndarray] = []
        self.velocity = bool(meta.get("velocity"))  # train.py --velocity: obs["prev_qpos"] joins the state
        # Grippers leave snapped to 0 or 1 (deviation 9: a sampled 0.9 closes the fingers a little, the next query
        # reads "closing has begun" and finishes the close in mid-air). Off only in lab/diagnostics.py openloop.
        self.binary_gripper = True
        self.noise_scale = 1.0  # the flow's starting noise times this: < 1 trades spread for precision (pi0: 1)

    @classmethod
    def load(cls, ckpt_path, device="cpu", use_ema=True) -> "Policy":
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model = VLA(ModelConfig.from_dict(ck["model_config"], str(ckpt_path)), seed=0)
        model.load_state_dict(ck["ema"] if use_ema and ck.get("ema") is not None else ck["model"])
        return cls(model, Tokenizer(ck["tokenizer"]), ck["stats"], ck["meta"], device)

    def reset(self) -> None:
        self._queue = []

    def _inputs(self, obs_batch: list[dict]):
        if missing := {c for o in obs_batch for c in self.cameras if c not in o.get("images", {})}:
            raise KeyError(f"observation has no image for camera(s) {sorted(missing)} (policy cameras: {self.cameras})")
        dev = self.device
        if self.cameras:
            imgs = np.stack([np.stack([np.asarray(o["images"][c]) for c in self.cameras]) for o in obs_batch])
            images = images_to_input(torch.from_numpy(imgs).to(dev), self.image_size)   # (B, C, 3, H, W)
        else:
            images = None
        qpos = np.stack([np.asarray(o["qpos"], np.float32) for o in obs_batch])         # (B, Dq)
        if qpos.shape[1] != len(self.qpos_names):
            raise ValueError(f"qpos has {qpos.shape[1]} dims, the policy expects {len(self.qpos_names)} ({self.qpos_names})")
        if self.velocity:  # the state: qpos and its change over the last control step
            if any("prev_qpos" not in o for o in obs_batch):
                raise KeyError("observation has no 'prev_qpos' (the measured qpos one control step earlier, as "
                               "sim.Env and eval_real.py give it), which this checkpoint needs (train.py --velocity)")
            prev = np.stack([np.asarray(o["prev_qpos"], np.float32) for o in obs_batch])  # (B, Dq)
            if prev.shape != qpos.shape:
                raise ValueError(f"prev_qpos has shape {prev.shape[1:]}, qpos {qpos.shape[1:]}")
            qpos = np.concatenate([qpos, qpos - prev], 1)                                 # (B, 2 Dq)
        qpos = torch.from_numpy(qpos).to(dev)
        ids, mask = self.tokenizer([o["instruction"] for o in obs_batch], self.cfg.lang_len)
        n = max(1, int(mask.sum(1).max()))  # trailing padding is masked anyway: drop it, fewer tokens
        return images, ids[:, :n].to(dev), mask[:, :n].to(dev), self.norm.state(qpos)

    @torch.inference_mode()
    def predict_chunk(self, obs_batch: list[dict], generator=None) -> np.ndarray:
        """(B, horizon, A) absolute joint targets (action_names), grippers 0 or 1 (binary_gripper). `generator` (CPU or
        on the device) fixes the noise."""
        images, ids, mask, state = self._inputs(obs_batch)
        shape = (len(obs_batch), self.horizon, self.cfg.action_dim)
        gdev = generator.device if generator is not None else self.device
        noise = self.noise_scale * torch.randn(shape, generator=generator, device=gdev).to(self.device)
        out = self.norm.unaction(self.model.sample(images, ids, mask, state, noise)).float().cpu().numpy()  # (B, H, A)
        if self.binary_gripper:
            g = self.gripper_indices
            out[..., g] = (out[..., g] >= 0.5).astype(out.dtype)
        return out

    def select_action(self, obs: dict) -> np.ndarray:
        """Execute `n_action_steps` of each chunk open loop, then query again."""
        if not self._queue:
            self._queue = list(self.predict_chunk([obs])[0, :self.n_action_steps])
        return self._queue.pop(0).astype(np.float32)

    @torch.inference_mode()
    def probe(self, obs: dict) -> dict:
        """StaKe heads on one observation: {'stage_prob': (n_stage,), 'keyframe': (A,) absolute}
        (only the heads this checkpoint has)."""
        if not (self.cfg.n_stage or self.cfg.keyframe_head):
            raise RuntimeError("this checkpoint has no StaKe heads (trained with --stage-weight 0 --keyframe-weight 0)")
        images, ids, mask, state = self._inputs([obs])
        cache, valid = self.model.encode_prefix(images, ids, mask, state)
        heads, out = self.model.stake(cache, valid), {}
        if "stage" in heads:
            out["stage_prob"] = torch.sigmoid(heads["stage"][0]).float().cpu().numpy()
        if "keyframe" in heads:
            out["keyframe"] = self.norm.unaction(heads["keyframe"]).float()[0].cpu().numpy()  # (A,) absolute
        return out
