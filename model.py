"""The small VLA: a from-scratch ViT + transformer backbone, a flow-matching action expert (pi0 recipe),
the StaKe stage / keyframe heads, and the `Policy` wrapper shared by simulation and robot evaluation.

Token layout and attention (True = row may attend to column):

                 prefix (images, language, state)   StaKe queries      action tokens
  prefix         bidirectional (lang padding off)   no                 no
  StaKe queries  yes                                itself only        no
  action tokens  yes                                no                 bidirectional

The prefix is encoded once by the backbone and its per-layer keys/values are cached. The StaKe queries
(backbone weights) and the action tokens (action-expert weights) are separate suffix passes that read
that cache, so removing the queries cannot change the actions: the action pass never sees them.

Deviations from pi0 (openpi), on purpose:
  1. Small from-scratch networks instead of pretrained PaliGemma: a timm ViT (shared across cameras, learned
     camera embedding), a pre-norm transformer backbone with LayerNorm + GELU MLP (not RMSNorm + GeGLU),
     learned position embeddings (not RoPE), and our own sentencepiece BPE tokenizer trained on the
     dataset's instructions (not the 256k PaliGemma vocabulary).
  2. The state token sits in the prefix and is bidirectional with images and language; pi0 puts it first in
     the suffix, in its own attention block, processed by the expert. Ours lets the StaKe queries read it.
  3. Horizon 20 (1 s at 20 Hz; pi0: 50), executing 10 steps per chunk; 96 px images (pi0: 224).
  4. The expert has the backbone's depth (as in pi0) and its own width; its attention runs at the
     backbone's width so the two streams share keys/values per layer (pi0 shares head count and size).
  5. Normalisation: z-score with a floor on the std (see train.py), not std + 1e-6 or quantiles.
  6. Augmentation is a random shift (pad + crop, train.py); pi0 uses crop 95 % + resize, rotation, colour.
  7. The prefix's last backbone layer only computes keys/values (its output is never read), and the Policy
     drops trailing language padding before encoding (masked either way; fewer tokens on a CPU).
  8. Optional (`vit_stem="conv"`): a stack of 3x3 convolutions in place of the ViT's patchify conv (conv_stem).
  9. Optional (`vit_pos="sincos"`): the ViT's position embedding is a fixed 2-D sin-cos table, not learned.
  10. Optional (`keypoints=K`): each camera enters the prefix as K spatial-softmax keypoints (Levine et al.
     2016; expected (x, y) over the patch grid, one token each) instead of its patch tokens. The instruction
     (mean language embedding) adds to the keypoint detectors, and the coordinates are also added to every
     action token (`kp_direct`), because a from-scratch backbone read only through attention learns to
     ignore them. None of pi0; all for 50-demonstration training (docs/experiments.md).
  11. In place of pi0's VLM pretraining: ground.py pretrains the keypoint front end
     (VISION_PREFIXES) to locate the objects the instruction names on thousands of rendered layouts, using
     the simulator's object positions as labels; train.py --vision-from loads it, --freeze-vision fixes it.
     With `grounded=2R` (train.py --grounded) its linear head, keypoints -> the (x, y) of R objects, comes
     too, frozen, and those positions enter the policy as one more prefix token and in kp_direct (with
     `grounded_only`, in place of the keypoints): 50 demonstrations show only 50 layouts to learn that
     readout again from. Measured on lift_block it changes little (48-55 of 100 against 49; docs/experiments.md).
     With grounded_only, train.py can move a sample's scene without re-rendering it (--symmetry: the joints
     in the batch, the positions here through ground_matrix / ground_offset). Optional (`ground_distances`,
     train.py --object-distances): the distances between the R positions join them, because a step done and
     one not begun can differ only there (stack_two reaches its second block from the same home pose as its
     first, with the first block now on the pad; docs/experiments_recipe.md). Optional (`object_tokens`,
     train.py --object-tokens, with grounded_only): each object enters the prefix as its own token (its (x, y)
     through one shared Linear, plus a learned role embedding) and the action tokens read them by attention
     alone, without kp_direct: a policy choosing its object by attention, not through one linear map of all.
  12. The Policy snaps each gripper output to 0 or 1 before a chunk leaves (pi0 sends its continuous output):
     the demonstrations command only those two, and a partly closed gripper in the state reads as a close under
     way. Optional (train.py --velocity): the state also holds qpos[t] - qpos[t-1] (pi0's state is qpos alone).
Presets: `small` uses depth 3 and an expert half as wide as the backbone (pi0's expert is also narrower)
to keep one chunk (prefix + 10 Euler steps) near 15-20 ms on 2 CPU cores; `base` is for one GPU.
Kept from pi0: t = 1 is noise, x_t = t * noise + (1 - t) * actions, target u = noise - actions, MSE loss;
t ~ Beta(1.5, 1) * 0.999 + 0.001; sine-cosine time embedding (periods 4e-3 .. 4) concatenated to each action
token and mixed by Linear, swish, Linear; 10 Euler steps from t = 1 with dt = -0.1; action tokens
bidirectional among themselves; AdamW (0.9, 0.95), clip 1.0, warm-up + cosine, EMA (train.py). Chunk steps
past an episode's end are masked from the loss (as LeRobot's pi0 port does). Training from scratch takes a
larger peak learning rate (3e-4, pi0 fine-tunes at 2.5e-5) and a slower EMA (0.999, pi0: 0.99).
"""
from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

STAKE_SEED_OFFSET = 7919  # StaKe: heads and queries draw from Generator(seed + this), never the global RNG

# the vision-language front end that ground.py pretrains and train.py --vision-from loads: everything
# encode_keypoints reads (the word embeddings also feed the backbone as the instruction tokens)
VISION_PREFIXES = ("vit.", "kp_logits.", "kp_lang.", "kp_text.", "lang_emb.", "lang_pos", "ground_head.")

# ModelConfig fields of retired options (docs/experiments.md) and the values that meant "off"
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
    vit_stem: str = "patch"              # "patch": timm's one 16x16 patchify conv; "conv": a stack of 3x3 convs
    vit_pos: str = "learned"             # the ViT's own position embedding: "learned" (timm) or "sincos" (fixed)
    keypoints: int = 0                   # > 0: K spatial-softmax keypoint tokens per camera replace the patch tokens
    kp_word_order: bool = False          # with keypoints: the instruction that shifts them passes one attention layer
                                         #   first, so word order counts ("red on blue" is not "blue on red")
    grounded: int = 0                    # > 0 (with keypoints): ground.py's head, keypoints -> this many object coordinates, feeds the policy
    grounded_only: bool = False          # with grounded: the policy sees those coordinates and not the keypoints themselves
    ground_mean: tuple = ()              # with grounded: world (x, y) = coordinate * ground_std + ground_mean (ground.py's
    ground_std: tuple = ()               #   target normalisation), which train.py's scene augmentations use
    ground_distances: bool = False       # with grounded: the R(R-1)/2 distances between those R points join them
    object_tokens: bool = False          # with grounded_only: one prefix token per object, read by attention only
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
    use_state: bool = True               # joint state token in the prefix (False: images + language only)
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
            (self.vit_stem in ("patch", "conv"), f"vit_stem must be 'patch' or 'conv', not '{self.vit_stem}'"),
            (self.vit_pos in ("learned", "sincos"), f"vit_pos must be 'learned' or 'sincos', not '{self.vit_pos}'"),
            (self.keypoints >= 0, "keypoints must be >= 0"),
            (self.grounded >= 0 and (not self.grounded or (self.keypoints and self.n_cameras)),
             "grounded needs keypoints and cameras (it reads the keypoints)"),
            (not self.grounded_only or self.grounded, "grounded_only needs grounded > 0"),
            (not self.ground_distances or self.grounded, "ground_distances needs grounded > 0"),
            (not self.object_tokens or (self.grounded_only and not self.ground_distances),
             "object_tokens needs grounded_only, and not ground_distances"),
            (len(self.ground_mean) == len(self.ground_std) in (0, self.grounded),
             f"ground_mean and ground_std need {self.grounded} values each (or none)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"ModelConfig: {msg}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "checkpoint") -> "ModelConfig":
        """The config a checkpoint stored. Options retired since (docs/experiments.md) are dropped where they
        were off; a checkpoint that used one needs the revision that still has it."""
        known = {f.name for f in dataclasses.fields(cls)}
        if used := {k: v for k, v in d.items() if k not in known and v not in RETIRED_OFF.get(k, ())}:
            raise ValueError(f"{source}: made with option(s) {used} that this version no longer has "
                             f"(docs/experiments.md names the revision that runs them)")
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


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (MAE): (h * w, dim), half the channels rows, half columns."""
    def axis(pos, d):
        x = pos[:, None] / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / (d / 2))[None]
        return torch.cat([torch.sin(x), torch.cos(x)], 1)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.cat([axis(ys.flatten(), dim // 2), axis(xs.flatten(), dim // 2)], 1)


def conv_stem(patch_size: int, width: int) -> nn.Sequential:
    """A convolutional stem in place of the ViT's patchify conv (Xiao et al. 2021, "Early convolutions help
    transformers see better"): 3x3 stride-2 convs while the stride left is even, then one conv of the stride
    left (1x1 for patch 16), so the token grid is the same as with patches. An option, off by default: what it
    changes here is in docs/experiments.md; ground.py's front end always uses it.
    """
    layers, c, stride, c_out = [], 3, patch_size, 32  # channels 32, 64, 128, ... capped at width
    while stride % 2 == 0 and stride > 1:
        c_out = min(width, c_out)
        layers += [nn.Conv2d(c, c_out, 3, 2, 1), nn.GELU()]
        c, stride, c_out = c_out, stride // 2, c_out * 2
    layers.append(nn.Conv2d(c, width, stride, stride))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- the model

class VLA(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        W, We, A = cfg.width, cfg.expert_width, cfg.action_dim
        # vision: one ViT for all cameras, learned camera embedding
        if cfg.n_cameras:
            self.vit = VisionTransformer(img_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=0,
                                         global_pool="", class_token=False, embed_dim=cfg.vit_width,
                                         depth=cfg.vit_depth, num_heads=cfg.vit_heads, mlp_ratio=cfg.mlp_ratio)
            if cfg.vit_stem == "conv":
                self.vit.patch_embed.proj = conv_stem(cfg.patch_size, cfg.vit_width)
            grid = (cfg.image_size[0] // cfg.patch_size, cfg.image_size[1] // cfg.patch_size)
            if cfg.vit_pos == "sincos":  # fixed: nothing per patch to memorise a layout with
                self.vit.pos_embed.data.copy_(sincos_2d(*grid, cfg.vit_width)[None])
                self.vit.pos_embed.requires_grad_(False)
            self.cam_emb = nn.Parameter(torch.zeros(cfg.n_cameras, W))
            if cfg.keypoints:  # spatial softmax (Levine et al. 2016): per-keypoint softmax over the patch grid
                self.kp_logits = nn.Linear(cfg.vit_width, cfg.keypoints)
                # the instruction shifts what each keypoint looks for (mean language embedding -> logit weights),
                # so a keypoint can follow "the red block" when red is named
                self.kp_lang = nn.Linear(W, cfg.keypoints * cfg.vit_width)
                # a mean of word + position embeddings is a bag of words (the positions' mean is the same for
                # any order); the stacking tasks name their objects' roles by order alone
                if cfg.kp_word_order:
                    self.kp_text = Block(W, W, cfg.heads, 2.0)
                # the coordinates also enter every action token directly: read only through attention, a
                # from-scratch backbone learned to ignore them (a scratch probe, not committed: a query readout
                # of the red block on 52 layouts stayed at chance; with the coordinates added to it, 1.4 cm)
                n_kp = cfg.n_cameras * cfg.keypoints * 2
                R = cfg.grounded // 2
                n_ground = cfg.grounded + (R * (R - 1) // 2 if cfg.ground_distances else 0)
                if cfg.object_tokens:  # one token per object: (x, y) -> W, plus the object's role
                    self.obj_proj = nn.Linear(2, W)
                    self.obj_role = nn.Parameter(torch.zeros(R, W))
                else:
                    self.kp_direct = nn.Linear(n_ground if cfg.grounded_only else n_kp + n_ground, We)
                if cfg.grounded:  # ground.py's object readout (loaded by train.py --grounded) and its token
                    self.ground_head = nn.Linear(n_kp, cfg.grounded)
                    if not cfg.object_tokens:
                        self.ground_proj = nn.Linear(n_ground, W)
                self.kp_proj = nn.Linear(2, W)  # a keypoint's expected (x, y) in [-1, 1] -> one token
                self.kp_emb = nn.Parameter(torch.zeros(cfg.keypoints, W))
                ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid[0]), torch.linspace(-1, 1, grid[1]), indexing="ij")
                self.register_buffer("kp_grid", torch.stack([xs.flatten(), ys.flatten()], 1), persistent=False)
            else:
                self.img_proj = nn.Linear(cfg.vit_width, W)
        # language and state
        self.lang_emb = nn.Embedding(cfg.vocab_size, W)
        self.lang_pos = nn.Parameter(torch.zeros(cfg.lang_len, W))
        if cfg.use_state:
            self.state_proj = nn.Linear(cfg.state_dim, W)
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
        for p in (self.lang_pos, self.action_pos) + ((self.cam_emb,) if cfg.n_cameras else ()) + \
                ((self.kp_emb,) if cfg.n_cameras and cfg.keypoints else ()) + \
                ((self.obj_role,) if cfg.object_tokens else ()):
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

    def encode_keypoints(self, images, lang, lang_mask):
        """images (B, C, 3, H, W); lang (B, L, W) embedded instruction, lang_mask (B, L) -> (B, C, K, 2): each
        keypoint's expected (x, y) in [-1, 1] over the patch grid (spatial softmax). ground.py pretrains this."""
        B, C = images.shape[:2]
        x = self.vit.forward_features(images.flatten(0, 1)).unflatten(0, (B, C))  # (B, C, N, Wv)
        if self.cfg.kp_word_order:  # one attention layer over the valid tokens, with their positions
            q, k, v = self.kp_text.project(lang)
            lang = self.kp_text.finish(lang, q, k, v, additive_mask(lang_mask[:, None, None, :]))  # (B, L, W)
        m = lang_mask[..., None].to(lang.dtype)
        l = (lang * m).sum(1) / m.sum(1).clamp(min=1)                       # (B, W) mean instruction embedding
        wk = self.kp_logits.weight + self.kp_lang(l).view(B, *self.kp_logits.weight.shape)  # (B, K, Wv)
        logits = torch.einsum("bcnv,bkv->bcnk", x, wk) + self.kp_logits.bias  # (B, C, N, K)
        w = logits.float().softmax(2)                                       # over the N patches
        return torch.einsum("bcnk,nd->bckd", w, self.kp_grid).to(x.dtype)   # (B, C, K, 2)

    def grounded_world(self, images, lang_ids, lang_mask):
        """(B, 2R) the grounded objects' world (x, y) in metres, as encode_prefix reads them before any training
        augmentation."""
        xy = self.encode_keypoints(images, self.embed_instruction(lang_ids), lang_mask).flatten(1)   # (B, C*K*2)
        pos = self.ground_head(xy)
        return pos * pos.new_tensor(self.cfg.ground_std) + pos.new_tensor(self.cfg.ground_mean)

    def object_distances(self, pos):
        """(B, 2R) normalised grounded positions -> (B, R(R-1)/2) the distances between them, in 10 cm: the same
        under the scene's symmetry (a turn or a mirror), so train.py --symmetry needs nothing more."""
        mu, sd = pos.new_tensor(self.cfg.ground_mean), pos.new_tensor(self.cfg.ground_std)
        world = (pos * sd + mu).unflatten(1, (-1, 2))                        # (B, R, 2) metres
        i, j = torch.triu_indices(world.shape[1], world.shape[1], 1)
        return (world[:, i] - world[:, j]).norm(dim=-1) / 0.1                # (B, R(R-1)/2)

    def encode_prefix(self, images, lang_ids, lang_mask, state, ground_matrix=None, ground_offset=None, ground=None):
        """images (B, C, 3, H, W) in [-1, 1]; lang_ids, lang_mask (B, L); state (B, D) normalised.
        Training only, with grounded: each object's world (x, y) becomes ground_matrix (B, 2, 2) @ (x, y) +
        ground_offset (B, 2) (train.py --symmetry, which moves state and actions alike); with grounded_only,
        `ground` (B, 2R) may hold the frozen front end's normalised output precomputed for these images
        (train.py's cache), and the images are not read.

        Returns the per-layer (k, v) cache, each (B, heads, P, head), and the key validity (B, P). With
        keypoints the cache has one more entry after the layers: the keypoint coordinates (B, C*K*2), followed
        by the grounded object coordinates (B, 2R) when cfg.grounded (none with cfg.object_tokens)."""
        B = state.shape[0]
        parts, valid, extra = [], [], []
        lang = self.embed_instruction(lang_ids)                             # (B, L, W)
        if self.cfg.n_cameras:
            if self.cfg.keypoints:  # K (x, y) per camera instead of N patch tokens
                if ground is None:
                    C = images.shape[1]
                    xy = self.encode_keypoints(images, lang, lang_mask)      # (B, C, K, 2)
                    x = (self.kp_proj(xy) + self.kp_emb + self.cam_emb[:C, None]).flatten(1, 2)  # (B, C*K, W)
                    xy = xy.flatten(1)                                      # (B, C*K*2)
                elif not self.cfg.grounded_only:
                    raise ValueError("precomputed grounded positions stand in for the images only with grounded_only")
                if self.cfg.grounded:
                    pos = self.ground_head(xy) if ground is None else ground  # (B, 2R) objects' (x, y), normalised
                    if ground_matrix is not None:
                        mu, sd = pos.new_tensor(self.cfg.ground_mean), pos.new_tensor(self.cfg.ground_std)
                        world = pos * sd + mu                                   # (B, 2R) metres
                        moved = torch.einsum("bij,brj->bri", ground_matrix, world.unflatten(1, (-1, 2)))
                        world = (moved + ground_offset[:, None]).flatten(1)  # (B, R, 2) -> (B, 2R)
                        pos = (world - mu) / sd
                    if self.cfg.ground_distances:
                        pos = torch.cat([pos, self.object_distances(pos)], 1)  # (B, 2R + R(R-1)/2)
                    if self.cfg.object_tokens:  # one token per object, read by attention only (no kp_direct)
                        x, xy = self.obj_proj(pos.unflatten(1, (-1, 2))) + self.obj_role, None  # (B, R, W)
                    elif self.cfg.grounded_only:  # nothing else of the scene: no layout detail to memorise
                        x, xy = self.ground_proj(pos)[:, None], pos                 # (B, 1, W), (B, 2R)
                    else:
                        g = self.ground_proj(pos)[:, None]                      # (B, 1, W)
                        x, xy = torch.cat([x, g], 1), torch.cat([xy, pos], 1)  # (B, C*K+1, W), (B, C*K*2 + 2R)
                if xy is not None:
                    extra.append(xy)                                        # for kp_direct
            else:
                C = images.shape[1]
                x = self.vit.forward_features(images.flatten(0, 1))        # (B*C, N, Wv)
                x = self.img_proj(x).unflatten(0, (B, C)) + self.cam_emb[:C, None]  # (B, C, N, W)
                x = x.flatten(1, 2)                                         # (B, C*N, W)
            parts.append(x)
            valid.append(torch.ones(B, x.shape[1], dtype=torch.bool, device=state.device))
        parts.append(lang)
        valid.append(lang_mask.bool())
        if self.cfg.use_state:
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
        """Run suffix tokens x (B, S, w) through `blocks`, attending to the cached prefix and to each other
        as `mask` (from suffix_mask) allows. The prefix never attends to the suffix. (zip stops at the last
        block: a keypoint entry after the layers' keys/values is not read here.)"""
        for blk, (kp, vp) in zip(blocks, cache):
            q, k, v = blk.project(x)
            x = blk.finish(x, q, torch.cat([kp, k], 2), torch.cat([vp, v], 2), mask)
        return x

    # ---- action expert
    def velocity(self, cache, valid, x_t, t, mask=None):
        """x_t (B, H, A) noisy normalised actions, t (B,) -> predicted velocity (B, H, A).
        Action tokens see the prefix and each other (pi0); `mask` may be passed in to reuse it."""
        H = x_t.shape[1]
        a = self.action_in(x_t)                                              # (B, H, We)
        te = sincos_time(t, a.shape[-1]).to(a.dtype)[:, None].expand(-1, H, -1)
        a = self.time_mlp_out(F.silu(self.time_mlp_in(torch.cat([a, te], -1)))) + self.action_pos[:H]
        if len(cache) > len(self.expert):  # keypoints: their coordinates reach every action token directly
            a = a + self.kp_direct(cache[len(self.expert)])[:, None]
        if mask is None:
            mask = self.suffix_mask(valid, torch.ones(H, H, dtype=torch.bool, device=a.device))
        a = self._suffix(self.expert, a, cache, mask)
        return self.action_out(self.expert_norm(a))

    @torch.no_grad()
    def sample(self, images, lang_ids, lang_mask, state, noise):
        """10 Euler steps from noise at t = 1 to actions at t = 0; the prefix is encoded once."""
        cache, valid = self.encode_prefix(images, lang_ids, lang_mask, state)
        x, n = noise, self.cfg.num_steps
        mask = self.suffix_mask(valid, torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device))
        dt = -1.0 / n
        for i in range(n):
            t = torch.full((x.shape[0],), 1.0 + i * dt, device=x.device)
            x = x + dt * self.velocity(cache, valid, x, t, mask)
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
        a = batch["actions"]
        tt = t[:, None, None]
        x_t = tt * noise + (1 - tt) * a                                      # t = 1 noise, t = 0 data
        u = noise - a
        v = self.velocity(cache, valid, x_t, t)
        m = batch["action_valid"].to(v.dtype)                                # (B, H): padded steps off
        per_step = ((v.float() - u.float()) ** 2).mean(-1)                   # (B, H)
        out = {"policy_loss": (per_step * m).sum() / m.sum().clamp(min=1)}
        heads = self.stake(cache, valid)                                     # StaKe
        if "stage" in heads:
            logits = heads["stage"].float()
            out["stage_logits"] = logits
            out["stage_loss"] = F.binary_cross_entropy_with_logits(logits, batch["stage"].float())
        if "keyframe" in heads:
            out["keyframe_l1"] = (heads["keyframe"].float() - batch["keyframe"].float()).abs().mean()
        return out


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


# ----------------------------------------------------------------------------- tokenizer, normalisation, images

def train_tokenizer(texts: list[str], vocab_size: int) -> bytes:
    """BPE with byte fallback on the instructions; returns the serialized model proto.

    sentencepiece needs vocab >= 256 bytes + 2 specials (pad, unk) + every distinct character (spaces
    become '\u2581'); we raise the request to that minimum and let it stop early on a tiny corpus."""
    texts = [t.strip() for t in texts if t.strip()] or ["empty"]
    chars = set("".join(t.lower() for t in texts).replace(" ", "\u2581"))
    vocab = max(int(vocab_size), 256 + 2 + len(chars) + 1)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, model_type="bpe", vocab_size=vocab,
        byte_fallback=True, hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="nmt_nfkc_cf",
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, minloglevel=2, num_threads=1)
    return buf.getvalue()


class Tokenizer:
    def __init__(self, proto: bytes):
        self.proto = bytes(proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.sp.encode(text)
        return self._cache[text]

    def __call__(self, texts: list[str], length: int):
        """-> ids (B, length) int64, mask (B, length) bool; truncated and padded with id 0."""
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), bool)
        for i, t in enumerate(texts):
            x = self.ids(t)[:length]
            ids[i, :len(x)], mask[i, :len(x)] = x, True
        return torch.from_numpy(ids), torch.from_numpy(mask)


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


def images_to_input(images: torch.Tensor, size) -> torch.Tensor:
    """uint8 (B, C, H, W, 3) on the device -> float (B, C, 3, h, w) in [-1, 1], resized to `size` if needed."""
    B, C = images.shape[:2]
    x = images.permute(0, 1, 4, 2, 3).flatten(0, 1).float()              # (B*C, 3, H, W)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return (x / 127.5 - 1.0).unflatten(0, (B, C))


# ----------------------------------------------------------------------------- the policy (sim and robot)

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
        self.image_size = tuple(self.cfg.image_size)
        self.horizon = self.cfg.horizon
        self.n_action_steps = self.cfg.n_action_steps
        self._queue: list[np.ndarray] = []
        self.velocity = bool(meta.get("velocity"))  # train.py --velocity: obs["prev_qpos"] joins the state
        # The demonstrations command each gripper fully open (1) or closed (0), never between, and the measured
        # opening is in the state. A sampled 0.9 would close the fingers a little, the next query would read
        # "closing has begun" and finish the close in mid-air (seen: lift_block, re-querying every step, 16/100).
        # So chunks leave with each gripper snapped to 0 or 1 at 0.5, as eval_real.py's gate does on the robot.
        # Off (False) only where the network's raw output is what is measured (eval_sim.py openloop).
        self.binary_gripper = True
        # Flow matching samples a chunk from noise; scaling that noise below 1 (0 = the flow from the noise's mean)
        # trades the chunk's spread for precision, as a temperature would. 1 = the trained distribution (pi0).
        self.noise_scale = 1.0

    @classmethod
    def load(cls, ckpt_path, device="cpu", use_ema=True) -> "Policy":
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model = VLA(ModelConfig.from_dict(ck["model_config"], str(ckpt_path)), seed=0)
        model.load_state_dict(ck["ema"] if use_ema and ck.get("ema") is not None else ck["model"])
        return cls(model, Tokenizer(ck["tokenizer"]), ck["stats"], ck["meta"], device)

    def reset(self) -> None:
        self._queue = []

    def _inputs(self, obs_batch: list[dict]):
        for cam in self.cameras:
            for obs in obs_batch:
                if cam not in obs.get("images", {}):
                    raise KeyError(f"observation has no image for camera '{cam}' (policy cameras: {self.cameras}; "
                                   f"got {sorted(obs.get('images', {}))})")
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


if __name__ == "__main__":  # parameter counts of the presets for the bimanual scene (14-D, 3 cameras, 96 px)
    for name in PRESETS:
        cfg = ModelConfig.from_preset(name, action_dim=14, state_dim=14, n_cameras=3, n_stage=2, keyframe_head=True)
        print(f"{name:6s} {format_counts(param_counts(VLA(cfg)))}")
