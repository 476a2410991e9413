"""Diagnostic (not a test): a --grounded-only lift_block policy evaluated with the simulator's true target (x, y)
in place of its grounding head's estimate, on eval_sim.py's seeds, batches and flow noise.

    MUJOCO_GL=egl python results/lift_block_diagnostics/oracle_positions.py CKPT [--seed S] [--episodes N]
"""
import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import eval_sim  # noqa: E402
import sim  # noqa: E402
from model import Policy  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("ckpt")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--episodes", type=int, default=100)
a = ap.parse_args()
torch.set_num_threads(1)
policy = Policy.load(a.ckpt)
cfg = policy.model.cfg
assert cfg.grounded_only, "needs a --grounded-only policy (its only view of the scene is the grounded position)"
mu, sd = torch.tensor(cfg.ground_mean), torch.tensor(cfg.ground_std)
step, reset = sim.Env.step, sim.Env.reset


def with_target(env, obs):
    obs["target_xy"] = np.array(env.obj_pos(env.layout.roles["target"])[:2], np.float32)
    return obs


sim.Env.step = lambda self, action: with_target(self, step(self, action))
sim.Env.reset = lambda self, seed: with_target(self, reset(self, seed))
predict, head_error_cm = policy.predict_chunk, []


def predict_with_truth(batch, **kw):
    xy = torch.tensor(np.stack([o["target_xy"] for o in batch]))                      # (B, 2) metres

    def hook(module, inputs, out):
        head_error_cm.append(100 * ((out * sd + mu) - xy).norm(dim=1).mean().item())
        return ((xy - mu) / sd).to(out.dtype)
    h = policy.model.ground_head.register_forward_hook(hook)
    try:
        return predict(batch, **kw)
    finally:
        h.remove()


policy.predict_chunk = predict_with_truth
seeds, eps = eval_sim.eval_seeds(a.seed, a.episodes), []
for i in range(0, a.episodes, 25):  # eval_sim.py --batch 25: the same flow noise per batch
    eps += eval_sim.rollout_batch(policy, "lift_block", seeds[i:i + 25], eval_sim.EvalConfig(ckpt=a.ckpt))
k = sum(e["success"] for e in eps)
print(f"{a.ckpt} seed block {a.seed}: true positions {k}/{a.episodes}, "
      f"failures {dict(collections.Counter(e['failure_type'] for e in eps if not e['success']))}; "
      f"the head's estimate was {np.mean(head_error_cm):.2f} cm from the truth (mean over queries)")
