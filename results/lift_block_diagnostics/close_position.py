"""Diagnostic (not a test): where the acting gripper is when a lift_block policy first commands it closed, by
outcome, and how the tcp's (x, y) there follows the block's (a least-squares line per arm and axis: slope 1 and a
small residual is a precise grasp). --oracle feeds the simulator's true block position in place of the grounding
head's estimate (to the policy and, with --object-frame, to its frame). eval_sim.py's seeds, batches and noise.

    MUJOCO_GL=egl python results/lift_block_diagnostics/close_position.py CKPT [--oracle] [--seed S]
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
ap.add_argument("--oracle", action="store_true")
a = ap.parse_args()
torch.set_num_threads(2)
policy = Policy.load(a.ckpt)
step, reset, first_close = sim.Env.step, sim.Env.reset, {}
truth = lambda e: np.array(e.obj_pos(e.layout.roles["target"])[:2], np.float32)


def step_and_look(self, action):
    target = self.layout.roles["target"]
    arm = self.layout.arm_for[target]
    z_before = self.tcp_pos(arm)[2]
    obs = step(self, action)
    obs["target_xy"] = truth(self)
    if self.seed_ not in first_close and action[sim.GRIPPER_INDICES[sim.ARMS.index(arm)]] < 0.5:
        tcp, block = self.tcp_pos(arm), self.obj_pos(target)
        first_close[self.seed_] = dict(rel=100 * (tcp - block), tcp=tcp[:2], block=block[:2], arm=arm,
                                       vz=100 * (tcp[2] - z_before), touching=self.touched_by_gripper(target))
    return obs


def reset_and_remember(self, seed):
    self.seed_ = seed
    obs = reset(self, seed)
    obs["target_xy"] = truth(self)
    return obs


sim.Env.step, sim.Env.reset = step_and_look, reset_and_remember
if a.oracle:
    cfg, predict = policy.model.cfg, policy.predict_chunk
    mu, sd = torch.tensor(cfg.ground_mean), torch.tensor(cfg.ground_std)

    def predict_with_truth(batch, **kw):
        xy = torch.tensor(np.stack([o["target_xy"] for o in batch]))                  # (B, 2) metres
        h = policy.model.ground_head.register_forward_hook(lambda m, i, out: ((xy - mu) / sd).to(out.dtype))
        try:
            return predict(batch, **kw)
        finally:
            h.remove()
    policy.predict_chunk = predict_with_truth
seeds, eps = eval_sim.eval_seeds(a.seed, a.episodes), []
for i in range(0, a.episodes, 25):
    eps += eval_sim.rollout_batch(policy, "lift_block", seeds[i:i + 25], eval_sim.EvalConfig(ckpt=a.ckpt))
print(f"{a.ckpt} seed block {a.seed}{' with the true block position' if a.oracle else ''}: "
      f"{sum(e['success'] for e in eps)}/{a.episodes}; at the first close command:")
by = collections.defaultdict(list)
for e in eps:
    if e["seed"] in first_close:
        by[e["failure_type"]].append(first_close[e["seed"]])
for kind, rows in sorted(by.items()):
    rel = np.array([r["rel"] for r in rows])
    print(f"  {kind:12s} {len(rows):3d} closed: horizontal {np.linalg.norm(rel[:, :2], axis=1).mean():.1f} cm, "
          f"tcp {rel[:, 2].mean():+.1f} cm above the block centre, moving {np.mean([r['vz'] for r in rows]):+.2f} "
          f"cm/step vertically, touching the block in {np.mean([r['touching'] for r in rows]):.0%}")
rows = [r for rs in by.values() for r in rs]
for arm in sim.ARMS:
    for c, axis in enumerate("xy"):
        tcp = np.array([r["tcp"][c] for r in rows if r["arm"] == arm])
        block = np.array([r["block"][c] for r in rows if r["arm"] == arm])
        slope, icpt = np.polyfit(block, tcp, 1)
        resid = tcp - (slope * block + icpt)
        print(f"  {arm:5s} arm {axis}: tcp = {slope:.2f} x block {100 * icpt:+.1f} cm, residual std "
              f"{100 * resid.std():.1f} cm (block std {100 * block.std():.1f} cm, {len(tcp)} closes)")
