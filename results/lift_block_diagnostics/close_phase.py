"""Diagnostic (not a test): at which step of its executed chunk a lift_block policy first commands the acting
gripper closed (0 = the chunk's first step, decided on the state of that moment; k = planned k steps earlier,
open loop), and how high above the block's centre the tcp is then, by outcome. eval_sim.py's seeds, batches and
noise; the chunk phase assumes the checkpoint's 10 executed steps per chunk.

    MUJOCO_GL=egl python results/lift_block_diagnostics/close_phase.py CKPT [--seed S] [--episodes N]
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
torch.set_num_threads(2)
policy = Policy.load(a.ckpt)
n_exec = policy.n_action_steps
step, reset, first_close = sim.Env.step, sim.Env.reset, {}


def step_and_look(self, action):
    target = self.layout.roles["target"]
    arm = self.layout.arm_for[target]
    if self.seed_ not in first_close and action[sim.GRIPPER_INDICES[sim.ARMS.index(arm)]] < 0.5:
        first_close[self.seed_] = (self.t % n_exec, 100 * (self.tcp_pos(arm)[2] - self.obj_pos(target)[2]))
    return step(self, action)


def reset_and_remember(self, seed):
    self.seed_ = seed
    return reset(self, seed)


sim.Env.step, sim.Env.reset = step_and_look, reset_and_remember
seeds, eps = eval_sim.eval_seeds(a.seed, a.episodes), []
for i in range(0, a.episodes, 25):
    eps += eval_sim.rollout_batch(policy, "lift_block", seeds[i:i + 25], eval_sim.EvalConfig(ckpt=a.ckpt))
print(f"{a.ckpt} seed block {a.seed}: {sum(e['success'] for e in eps)}/{a.episodes}; the first close command, "
      f"by its step within the executed chunk (0..{n_exec - 1}):")
by = collections.defaultdict(list)
for e in eps:
    if e["seed"] in first_close:
        by[e["failure_type"]].append(first_close[e["seed"]])
for kind, rows in sorted(by.items()):
    phase, height = np.array([p for p, _ in rows]), np.array([h for _, h in rows])
    print(f"  {kind:12s} {len(rows):3d} closed: {np.bincount(phase, minlength=n_exec).tolist()}, "
          f"tcp {height.mean():+.1f} cm above the block centre")
