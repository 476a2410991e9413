"""Diagnostic (not a test): where the acting gripper is relative to the block when the policy first commands it
closed (action < 0.5), by outcome, on eval_sim.py's seeds, batches and flow noise (the policy's own positions).

    MUJOCO_GL=egl python results/lift_block_diagnostics/close_height.py CKPT [--seed S] [--episodes N]
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
step, reset, first_close = sim.Env.step, sim.Env.reset, {}


def step_and_look(self, action):
    obs = step(self, action)
    target = self.layout.roles["target"]
    arm = self.layout.arm_for[target]
    if self.seed_ not in first_close and action[sim.GRIPPER_INDICES[sim.ARMS.index(arm)]] < 0.5:
        first_close[self.seed_] = 100 * (self.tcp_pos(arm) - self.obj_pos(target))    # cm, tcp - block
    return obs


def reset_and_remember(self, seed):
    self.seed_ = seed
    return reset(self, seed)


sim.Env.step, sim.Env.reset = step_and_look, reset_and_remember
seeds, eps = eval_sim.eval_seeds(a.seed, a.episodes), []
for i in range(0, a.episodes, 25):
    eps += eval_sim.rollout_batch(policy, "lift_block", seeds[i:i + 25], eval_sim.EvalConfig(ckpt=a.ckpt))
print(f"{a.ckpt} seed block {a.seed}: {sum(e['success'] for e in eps)}/{a.episodes}; at the first close command:")
by = collections.defaultdict(list)
for e in eps:
    by[e["failure_type"]].append(first_close.get(e["seed"], np.full(3, np.nan)))
for kind, d in sorted(by.items()):
    d = np.array(d)
    closed = ~np.isnan(d[:, 0])
    xy = np.linalg.norm(d[closed, :2], axis=1)
    print(f"  {kind:12s} {len(d):3d} episodes ({closed.sum()} closed): horizontal {xy.mean():.1f} cm "
          f"(median {np.median(xy):.1f}), tcp above the block centre {d[closed, 2].mean():+.1f} cm")
