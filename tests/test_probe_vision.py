"""probe_vision.py as a subprocess on a tiny setting: the curves file, the chance level, a clear error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import probe_vision  # noqa: E402  (torch first, then MuJoCo renders)


def test_cli_writes_curves_and_refuses_unknown_arms(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "probe.json"
    cmd = [sys.executable, str(ROOT / "probe_vision.py"), "--out", str(out), "--samples", "24", "--holdout", "12",
           "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--arms", "cnn", "vla_pool"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["command"].startswith("python probe_vision.py") and res["git_revision"]
    assert set(res["curves"]) == {"cnn", "vla_pool"} and [c["step"] for c in res["curves"]["cnn"]] == [2, 4]
    assert 0 < res["train_layouts"] <= 24 and 0 < res["heldout_layouts"] <= 12  # layouts without red are skipped
    assert all(np.isfinite(c["heldout_cm"]) for cs in res["curves"].values() for c in cs)
    # chance is the mean predictor's error on the held-out layouts, recomputed here from the layouts alone
    _, y, _ = probe_vision.render("red", range(probe_vision.SEED_OFFSET, probe_vision.SEED_OFFSET + 24))
    _, hy, _ = probe_vision.render("red", range(probe_vision.SEED_OFFSET + 24, probe_vision.SEED_OFFSET + 36))
    assert abs(res["chance_cm"] - 100 * (hy - y.mean(0)).norm(dim=-1).mean().item()) < 0.01
    bad = subprocess.run(cmd[:-2] + ["resnet"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "unknown arm 'resnet'" in bad.stderr and "Traceback" not in bad.stderr


def test_policy_vit_arm_reads_a_frozen_trained_encoder(tmp_path):
    """policy_vit(_pos): the probe reads the checkpoint's own ViT, projection and top-camera embedding,
    frozen, through a fresh trainable backbone (with image_pos for the _pos arm)."""
    import pytest
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import make_dataset
    from train import Options, train
    ds = make_dataset(tmp_path / "d", n_episodes=2, T=12, cameras=("left_wrist", "top"), image_size=(96, 96))
    train(Options(data=[str(ds)], out=str(tmp_path / "r"), preset="small", steps=2, batch_size=2, log_every=1, warmup=1))
    ck_path = tmp_path / "r" / "ckpt.pt"
    ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    tok = probe_vision.Tokenizer(probe_vision.train_tokenizer(["pick up the red cube"], 300))
    for arm, pos in (("policy_vit", False), ("policy_vit_pos", True)):
        _, net, _ = probe_vision.make(arm, tok, str(ck_path))
        assert net.cfg.image_pos == pos
        assert torch.equal(net.vla.cam_emb[0], ck["ema"]["cam_emb"][1])  # the top camera's row
        for n, p in net.vla.named_parameters():
            if n.startswith(("vit.", "img_proj.")):
                assert torch.equal(p, ck["ema"][n]) and not p.requires_grad, n
            elif n.startswith("blocks."):
                assert p.requires_grad and not torch.equal(p, ck["ema"][n]), n  # fresh, not the policy's
    with pytest.raises(ValueError, match="needs --policy-ckpt"):
        probe_vision.make("policy_vit", tok, "")
    ck["model_config"]["keypoints"] = 4  # a keypoint policy has no patch tokens to read: a clear error
    torch.save(ck, tmp_path / "kp.pt")
    with pytest.raises(ValueError, match="keypoint policy"):
        probe_vision.make("policy_vit", tok, str(tmp_path / "kp.pt"))
