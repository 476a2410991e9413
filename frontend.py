"""The VLA's front end: how words and camera images become prefix tokens (model.py uses it as pi0 uses
PaliGemma's tokenizer and image encoder): the instruction tokenizer, image preprocessing, and the vision weights.

`FrontEnd` is a mixin of model.VLA: it builds the vision weights on the model itself, so their names
(VISION_PREFIXES, with the word embeddings that model.py owns) are the ones ground.py pretrains, ships in
frontends/ and train.py --vision-from loads. Two paths:

  patch tokens (default, pi0): one timm ViT shared by all cameras, a learned camera embedding, and each
      camera's patches projected to the backbone's width.
  keypoints (`keypoints=K`, every shipped recipe): each camera enters as K spatial-softmax keypoints (Levine et
      al. 2016; expected (x, y) over the patch grid, one token each) instead of its patches. The instruction
      (mean language embedding) shifts what each keypoint looks for, so "the red block" can steer it; with
      `kp_word_order` the words pass one attention layer first, so "red on blue" is not "blue on red". The
      coordinates are also returned as `direct` features, which model.py adds to every action token
      (`kp_direct`): a from-scratch backbone read only through attention learned to ignore them.

Grounding, in place of pi0's VLM pretraining (ground.py; docs/pipeline.md): ground.py trains the keypoint front
end to locate the objects the instruction names on thousands of rendered layouts, with the simulator's object
positions as labels. With `grounded=2R` its linear head (keypoints -> the (x, y) of R objects) comes along,
frozen, and those positions enter the prefix as one more token and join `direct`; `grounded_only` gives the
policy the positions alone (no layout detail to memorise from 50 demonstrations). Options on top:
`ground_distances` adds the R(R-1)/2 distances between the objects (a block already on the pad and one still
to pick differ there); `object_tokens` makes each object its own token (its (x, y) through one shared Linear
plus a role embedding), read by attention alone, so a policy picks its object instead of blending them all
through one linear map. Training may move a sample's scene without re-rendering it (train.py --symmetry):
the positions are moved by `ground_matrix` / `ground_offset` here, the joints in the batch.

Two ViT options, off by default and always on in ground.py's front ends: `vit_stem="conv"`, a stack of 3x3
convolutions in place of the patchify conv (conv_stem), and `vit_pos="sincos"`, a fixed 2-D sin-cos position
table. None of this is pi0's; what each option measured is in docs/findings.md.
"""
from __future__ import annotations

import io

import numpy as np
import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

# the weights ground.py pretrains and train.py --vision-from loads: everything encode_keypoints reads (the word
# embeddings, model.py's, also feed the backbone as the instruction tokens)
VISION_PREFIXES = ("vit.", "kp_logits.", "kp_lang.", "kp_text.", "lang_emb.", "lang_pos", "ground_head.")


# ----------------------------------------------------------------------------- words and pixels

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


def images_to_input(images: torch.Tensor, size) -> torch.Tensor:
    """uint8 (B, C, H, W, 3) on the device -> float (B, C, 3, h, w) in [-1, 1], resized to `size` if needed."""
    B, C = images.shape[:2]
    x = images.permute(0, 1, 4, 2, 3).flatten(0, 1).float()              # (B*C, 3, H, W)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return (x / 127.5 - 1.0).unflatten(0, (B, C))


# ----------------------------------------------------------------------------- the vision weights

def check_config(cfg) -> list:
    """(ok, message) pairs for the front end's fields of model.ModelConfig."""
    return [
        (cfg.vit_stem in ("patch", "conv"), f"vit_stem must be 'patch' or 'conv', not '{cfg.vit_stem}'"),
        (cfg.vit_pos in ("learned", "sincos"), f"vit_pos must be 'learned' or 'sincos', not '{cfg.vit_pos}'"),
        (cfg.keypoints >= 0, "keypoints must be >= 0"),
        (cfg.grounded >= 0 and (not cfg.grounded or (cfg.keypoints and cfg.n_cameras)),
         "grounded needs keypoints and cameras (it reads the keypoints)"),
        (not cfg.grounded_only or cfg.grounded, "grounded_only needs grounded > 0"),
        (not cfg.ground_distances or cfg.grounded, "ground_distances needs grounded > 0"),
        (not cfg.object_tokens or (cfg.grounded_only and not cfg.ground_distances),
         "object_tokens needs grounded_only, and not ground_distances"),
        (len(cfg.ground_mean) == len(cfg.ground_std) in (0, cfg.grounded),
         f"ground_mean and ground_std need {cfg.grounded} values each (or none)"),
    ]


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
    left (1x1 for patch 16), so the token grid is the same as with patches."""
    layers, c, stride, c_out = [], 3, patch_size, 32  # channels 32, 64, 128, ... capped at width
    while stride % 2 == 0 and stride > 1:
        c_out = min(width, c_out)
        layers += [nn.Conv2d(c, c_out, 3, 2, 1), nn.GELU()]
        c, stride, c_out = c_out, stride // 2, c_out * 2
    layers.append(nn.Conv2d(c, width, stride, stride))
    return nn.Sequential(*layers)


class FrontEnd(nn.Module):
    """Mixin of model.VLA: the vision weights and the image tokens. The model's __init__ calls build_vision
    first (the weights' initialisation order is part of a seed's result)."""

    def build_vision(self, cfg, block):
        """The vision weights, on the model itself; `block` is model.Block (for kp_word_order)."""
        W, We = cfg.width, cfg.expert_width
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
        if not cfg.keypoints:
            self.img_proj = nn.Linear(cfg.vit_width, W)
            return
        self.kp_logits = nn.Linear(cfg.vit_width, cfg.keypoints)    # per-keypoint logits over the patch grid
        self.kp_lang = nn.Linear(W, cfg.keypoints * cfg.vit_width)  # instruction -> a shift of those weights
        if cfg.kp_word_order:  # a mean of word + position embeddings is a bag of words
            self.kp_text = block(W, W, cfg.heads, 2.0)
        n_kp, R = cfg.n_cameras * cfg.keypoints * 2, cfg.grounded // 2
        n_ground = cfg.grounded + (R * (R - 1) // 2 if cfg.ground_distances else 0)
        if cfg.object_tokens:  # one token per object: (x, y) -> W, plus the object's role
            self.obj_proj = nn.Linear(2, W)
            self.obj_role = nn.Parameter(torch.zeros(R, W))
        else:  # model.py adds these straight into every action token
            self.kp_direct = nn.Linear(n_ground if cfg.grounded_only else n_kp + n_ground, We)
        if cfg.grounded:  # ground.py's object readout (train.py --grounded) and its token
            self.ground_head = nn.Linear(n_kp, cfg.grounded)
            if not cfg.object_tokens:
                self.ground_proj = nn.Linear(n_ground, W)
        self.kp_proj = nn.Linear(2, W)  # a keypoint's expected (x, y) in [-1, 1] -> one token
        self.kp_emb = nn.Parameter(torch.zeros(cfg.keypoints, W))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid[0]), torch.linspace(-1, 1, grid[1]), indexing="ij")
        self.register_buffer("kp_grid", torch.stack([xs.flatten(), ys.flatten()], 1), persistent=False)

    def vision_tokens(self) -> tuple:
        """The learned token embeddings of the front end (initialised like model.py's positions)."""
        names = ("cam_emb", "kp_emb", "obj_role")
        return tuple(getattr(self, n) for n in names if hasattr(self, n))

    def encode_keypoints(self, images, lang, lang_mask):
        """images (B, C, 3, H, W); lang (B, L, W) embedded instruction, lang_mask (B, L) -> (B, C, K, 2): each
        keypoint's expected (x, y) in [-1, 1] over the patch grid (spatial softmax). ground.py pretrains this."""
        B, C = images.shape[:2]
        x = self.vit.forward_features(images.flatten(0, 1)).unflatten(0, (B, C))  # (B, C, N, Wv)
        if self.cfg.kp_word_order:  # one attention layer over the valid tokens, with their positions
            q, k, v = self.kp_text.project(lang)
            keys = torch.zeros(lang_mask.shape, device=lang.device).masked_fill(~lang_mask.bool(), float("-inf"))
            lang = self.kp_text.finish(lang, q, k, v, keys[:, None, None, :])  # (B, L, W)
        m = lang_mask[..., None].to(lang.dtype)
        l = (lang * m).sum(1) / m.sum(1).clamp(min=1)                       # (B, W) mean instruction embedding
        wk = self.kp_logits.weight + self.kp_lang(l).view(B, *self.kp_logits.weight.shape)  # (B, K, Wv)
        logits = torch.einsum("bcnv,bkv->bcnk", x, wk) + self.kp_logits.bias  # (B, C, N, K)
        w = logits.float().softmax(2)                                       # over the N patches
        return torch.einsum("bcnk,nd->bckd", w, self.kp_grid).to(x.dtype)   # (B, C, K, 2)

    def grounded_world(self, images, lang_ids, lang_mask):
        """(B, 2R) the grounded objects' world (x, y) in metres, before any training augmentation."""
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

    def embed_images(self, images, lang, lang_mask, ground_matrix=None, ground_offset=None, ground=None):
        """images (B, C, 3, H, W) in [-1, 1]; lang (B, L, W) the embedded instruction -> the image tokens
        (B, N, W) and the `direct` features (B, F) for every action token, or None.

        Training only, with grounded: each object's world (x, y) becomes ground_matrix (B, 2, 2) @ (x, y) +
        ground_offset (B, 2) (train.py --symmetry); with grounded_only, `ground` (B, 2R) may hold the frozen
        front end's normalised output precomputed for these images (train.py's cache): images are not read."""
        cfg = self.cfg
        if not cfg.keypoints:  # pi0: patch tokens
            B, C = images.shape[:2]
            x = self.vit.forward_features(images.flatten(0, 1))            # (B*C, N, Wv)
            x = self.img_proj(x).unflatten(0, (B, C)) + self.cam_emb[:C, None]  # (B, C, N, W)
            return x.flatten(1, 2), None                                    # (B, C*N, W)
        if ground is None:  # K (x, y) per camera instead of N patch tokens
            C = images.shape[1]
            xy = self.encode_keypoints(images, lang, lang_mask)              # (B, C, K, 2)
            x = (self.kp_proj(xy) + self.kp_emb + self.cam_emb[:C, None]).flatten(1, 2)  # (B, C*K, W)
            xy = xy.flatten(1)                                              # (B, C*K*2)
        elif not cfg.grounded_only:
            raise ValueError("precomputed grounded positions stand in for the images only with grounded_only")
        if not cfg.grounded:
            return x, xy
        pos = self.ground_head(xy) if ground is None else ground            # (B, 2R) objects' (x, y), normalised
        if ground_matrix is not None:
            mu, sd = pos.new_tensor(cfg.ground_mean), pos.new_tensor(cfg.ground_std)
            world = (pos * sd + mu).unflatten(1, (-1, 2))                   # (B, R, 2) metres
            moved = torch.einsum("bij,brj->bri", ground_matrix, world) + ground_offset[:, None]
            pos = (moved.flatten(1) - mu) / sd
        if cfg.ground_distances:
            pos = torch.cat([pos, self.object_distances(pos)], 1)          # (B, 2R + R(R-1)/2)
        if cfg.object_tokens:  # one token per object, read by attention only (no direct features)
            return self.obj_proj(pos.unflatten(1, (-1, 2))) + self.obj_role, None  # (B, R, W)
        if cfg.grounded_only:  # nothing else of the scene
            return self.ground_proj(pos)[:, None], pos                      # (B, 1, W), (B, 2R)
        g = self.ground_proj(pos)[:, None]                                  # (B, 1, W)
        return torch.cat([x, g], 1), torch.cat([xy, pos], 1)                # (B, C*K+1, W), (B, C*K*2 + 2R)
