"""Can the vision encoder learn *where* things are? A diagnostic for issue 5 (policies that never pick the block).

    python probe_vision.py --out results/vision_probe.json [--target red|named] [--steps 400] [--arms cnn vit ...]

Renders the top camera of random lift_block layouts (seeds 2_000_000.., disjoint from demonstration and
evaluation seeds; arms at home), then trains each encoder from scratch to regress one block's (x, y) on the
table and prints the held-out error (cm) as it goes, beside the mean predictor's (chance):
  cnn         4 strided convolutions, flatten, MLP: the position is in the layout of the features.
  vit         the `small` preset's timm ViT (patch 16, width 128, depth 4) with its learned position embedding
              (timm's init, trunc-normal std 0.02), average-pooled, linear head.
  vit_sincos  the same ViT with a fixed 2-D sine-cosine position embedding (MAE), not trained.
  vla         the whole small VLA (no state, top camera) read out by a query token through the backbone, as
              the StaKe heads read it: the path the policy's first decision has to go through.
  vla_pool    the same VLA's image tokens (ViT, projection, camera embedding) averaged, linear head: no backbone.
  vla_conv    `vla` with the convolutional ViT stem (model.conv_stem) in place of the patchify conv.
  policy_vit  a trained policy's vision encoder (--policy-ckpt), frozen, read by a fresh backbone and query as
              in `vla`: are the positions in its tokens, and can a readout learn to find them?
  policy_vit_pos  the same with model.ModelConfig.image_pos (2-D positions on the tokens in the backbone).
--freeze-backbone N keeps the vla arms' backbone at its random init for N steps (train.py --vision-warmup).
--target red regresses the red block (no language needed; layouts without it are skipped); --target named
regresses the block the instruction names (the model must bind the colour word; only `vla` reads language).
Writes the curves with the command and git revision. Seeded: the same flags give the same numbers on one machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import data
from model import PRESETS, VLA, ModelConfig, Tokenizer, images_to_input, sincos_2d, train_tokenizer
from train import git_revision

SEED_OFFSET = 2_000_000
ARMS = ("cnn", "vit", "vit_sincos", "vla", "vla_pool", "vla_conv", "policy_vit", "policy_vit_pos")


def render(target: str, seeds) -> tuple:
    """(images (N, 3, H, W) in [-1, 1], xy (N, 2), instructions) for the seeds whose layout has the target."""
    import sim
    env = sim.make_env("lift_block", cameras=("top",))
    imgs, xy, texts = [], [], []
    for s in seeds:
        lay = sim.TASKS["lift_block"].layout(s)
        name = "block_red" if target == "red" else lay.roles["target"]
        if abs(lay.poses[name][1]) > 0.45:  # parked off the table
            continue
        imgs.append(env.reset(s)["images"]["top"])
        xy.append(lay.poses[name][:2])
        texts.append(lay.instruction)
    x = images_to_input(torch.from_numpy(np.stack(imgs))[:, None], (96, 96))[:, 0]
    return x, torch.tensor(np.array(xy), dtype=torch.float32), texts


class VLAReadout(nn.Module):
    """The small VLA with a query token read through its backbone (as model.VLA.stake does) and a linear head."""

    def __init__(self, tok: Tokenizer, pool: bool = False, vit_stem: str = "patch", image_pos: bool = False,
                 vision_from: dict | None = None):
        super().__init__()
        self.pool = pool
        if vision_from is not None:
            vit_stem = vision_from["model_config"].get("vit_stem", "patch")
        self.cfg = ModelConfig.from_preset("small", vit_stem=vit_stem, image_pos=image_pos, use_state=False, action_dim=14,
                                           state_dim=14, n_cameras=1, image_size=(96, 96), vocab_size=tok.vocab_size,
                                           n_stage=0, keyframe_head=False)
        self.vla, self.tok = VLA(self.cfg), tok
        if vision_from is not None:  # a trained policy's ViT, projection and top-camera embedding, frozen
            sd, cams = vision_from["ema"], vision_from["meta"]["cameras"]
            if vision_from["model_config"].get("keypoints", 0):
                raise ValueError("--policy-ckpt: a keypoint policy (--keypoints) has no patch tokens to read here")
            if "top" not in cams:
                raise ValueError(f"--policy-ckpt: the policy has no 'top' camera ({cams})")
            mine = {k: v for k, v in sd.items() if k.startswith(("vit.", "img_proj."))}
            mine["cam_emb"] = sd["cam_emb"][cams.index("top")][None]
            try:
                self.vla.load_state_dict(mine, strict=False)
            except RuntimeError as e:
                raise ValueError(f"--policy-ckpt: its vision encoder is not the small preset's: {e}") from None
            for n, p in self.vla.named_parameters():
                p.requires_grad_(not n.startswith(("vit.", "img_proj.", "cam_emb")))
        self.query = nn.Parameter(torch.randn(1, 1, self.cfg.width) * 0.02)
        self.head = nn.Sequential(nn.LayerNorm(self.cfg.width), nn.Linear(self.cfg.width, 2))

    def forward(self, x, texts):
        if self.pool:  # the VLA's image tokens (ViT, projection, camera embedding), averaged: no backbone
            tokens = self.vla.img_proj(self.vla.vit.forward_features(x)) + self.vla.cam_emb[0]  # (B, N, W)
            return self.head(tokens.mean(1))
        ids, mask = self.tok(texts, self.cfg.lang_len)
        cache, valid = self.vla.encode_prefix(x[:, None], ids, mask, torch.zeros(len(x), 14))
        eye = torch.ones(1, 1, dtype=torch.bool)
        out = self.vla._suffix(self.vla.blocks, self.query.expand(len(x), -1, -1), cache, self.vla.suffix_mask(valid, eye))
        return self.head(out[:, 0])


def make(arm: str, tok: Tokenizer, policy_ckpt: str = "") -> tuple:
    """(network taking (images, texts), peak learning rate)."""
    if arm == "cnn":
        net = nn.Sequential(nn.Conv2d(3, 32, 5, 2, 2), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
                            nn.Conv2d(64, 64, 3, 2, 1), nn.GELU(), nn.Conv2d(64, 64, 3, 2, 1), nn.GELU(),
                            nn.Flatten(), nn.Linear(64 * 6 * 6, 256), nn.GELU(), nn.Linear(256, 2))
        return (lambda x, t: net(x)), net, 1e-3
    if arm in ("vit", "vit_sincos"):
        p = PRESETS["small"]
        net = VisionTransformer(img_size=(96, 96), patch_size=p["patch_size"], num_classes=2, global_pool="avg",
                                class_token=False, embed_dim=p["vit_width"], depth=p["vit_depth"], num_heads=p["vit_heads"])
        if arm == "vit_sincos":
            net.pos_embed.data.copy_(sincos_2d(*net.patch_embed.grid_size, p["vit_width"])[None])
            net.pos_embed.requires_grad_(False)
        return (lambda x, t: net(x)), net, 3e-4
    if arm in ("vla", "vla_pool", "vla_conv"):
        net = VLAReadout(tok, pool=arm == "vla_pool", vit_stem="conv" if arm == "vla_conv" else "patch")
        return net, net, 3e-4
    if arm in ("policy_vit", "policy_vit_pos"):
        if not policy_ckpt:
            raise ValueError(f"arm {arm} needs --policy-ckpt")
        ck = torch.load(policy_ckpt, map_location="cpu", weights_only=True)
        net = VLAReadout(tok, image_pos=arm == "policy_vit_pos", vision_from=ck)
        return net, net, 3e-4
    raise ValueError(f"unknown arm '{arm}' ({', '.join(ARMS)})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/vision_probe.json", help="where the curves go (JSON)")
    ap.add_argument("--target", default="red", choices=["red", "named"], help="which block's position to regress")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), help="encoders to train")
    ap.add_argument("--samples", type=int, default=6000, help="rendered training layouts (before skipping)")
    ap.add_argument("--holdout", type=int, default=500, help="rendered held-out layouts (before skipping)")
    ap.add_argument("--steps", type=int, default=400, help="optimiser steps per encoder")
    ap.add_argument("--batch-size", type=int, default=64, help="samples per step")
    ap.add_argument("--eval-every", type=int, default=50, help="steps between held-out errors")
    ap.add_argument("--seed", type=int, default=0, help="seeds weights and batches (the same for every arm)")
    ap.add_argument("--policy-ckpt", default="", help="the trained policy whose vision the policy_vit arms read")
    ap.add_argument("--freeze-backbone", type=int, default=0, metavar="STEPS",
                    help="vla arms: keep the backbone blocks at their random init for the first STEPS steps")
    args = ap.parse_args(argv)
    if bad := [a for a in args.arms if a not in ARMS]:  # before the rendering
        raise ValueError(f"unknown arm '{bad[0]}' ({', '.join(ARMS)})")
    if any(a.startswith("policy_vit") for a in args.arms) and not Path(args.policy_ckpt).is_file():
        raise ValueError(f"the policy_vit arms need --policy-ckpt, a checkpoint file (got '{args.policy_ckpt}')")

    t0 = time.time()
    X, Y, T = render(args.target, range(SEED_OFFSET, SEED_OFFSET + args.samples))
    HX, HY, HT = render(args.target, range(SEED_OFFSET + args.samples, SEED_OFFSET + args.samples + args.holdout))
    mean, std = Y.mean(0), Y.std(0)
    chance = 100 * (HY - mean).norm(dim=-1).mean().item()
    print(f"rendered {len(X)} + {len(HX)} layouts in {time.time() - t0:.0f} s | chance (mean predictor) {chance:.1f} cm")
    tok = Tokenizer(train_tokenizer(sorted(set(T + HT)), 512))
    curves = {}
    for arm in args.arms:
        torch.manual_seed(args.seed)
        fwd, net, lr = make(arm, tok, args.policy_ckpt)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=1e-4)
        g = torch.Generator().manual_seed(args.seed)
        curves[arm], t0 = [], time.time()
        for step in range(1, args.steps + 1):
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, step / 50)
            idx = torch.randint(0, len(X), (args.batch_size,), generator=g)
            loss = F.smooth_l1_loss(fwd(X[idx], [T[i] for i in idx]), (Y[idx] - mean) / std)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if arm.startswith("vla") and step <= args.freeze_backbone:  # AdamW skips params without grads
                for p in net.vla.blocks.parameters():
                    p.grad = None
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % args.eval_every == 0 or step == args.steps:
                net.eval()
                with torch.no_grad():
                    pred = torch.cat([fwd(HX[i:i + 100], HT[i:i + 100]) for i in range(0, len(HX), 100)]) * std + mean
                net.train()
                err = 100 * (pred - HY).norm(dim=-1).mean().item()
                curves[arm].append({"step": step, "heldout_cm": round(err, 2), "s": round(time.time() - t0, 1)})
                print(f"{arm:11s} step {step:4d}  held-out error {err:5.1f} cm  (chance {chance:.1f})  {time.time() - t0:4.0f} s", flush=True)
    out = {"command": "python " + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "git_revision": git_revision(),
           "config": vars(args), "train_layouts": len(X), "heldout_layouts": len(HX), "chance_cm": round(chance, 2),
           "final_cm": {a: c[-1]["heldout_cm"] for a, c in curves.items()}, "curves": curves}
    data.atomic_write_bytes(Path(args.out), lambda f: f.write(json.dumps(out, indent=1).encode()))
    print(json.dumps(out["final_cm"]))
    return out


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        sys.exit(f"error: {e}")
