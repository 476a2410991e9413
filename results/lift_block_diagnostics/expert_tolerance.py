"""Diagnostic (not a test): how precisely must a lift_block grasp be placed? The scripted expert's lift, with its
grasp position moved by Gaussian noise of std SIGMA metres per horizontal axis, and with its yaw-aware grasp
rotation ('yaw') or the arm's natural finger direction whatever the block's yaw ('natural': all that a
--grounded-only policy, which sees positions but no yaw, can know). Also: the expert grasping where the grounding
head puts the block at reset (the perception ceiling of a policy that reads that head).

    python results/lift_block_diagnostics/expert_tolerance.py [--episodes 200]
    MUJOCO_GL=egl python results/lift_block_diagnostics/expert_tolerance.py --head-from runs/lift_ee_sym/ckpt.pt
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import eval_sim  # noqa: E402
import sim  # noqa: E402
from experts import Expert, topdown_rot  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--episodes", type=int, default=200)
ap.add_argument("--head-from", default="", help="a --grounded policy checkpoint: grasp at its head's estimate")
a = ap.parse_args()
torch.set_num_threads(2)


class Perturbed(Expert):
    """The lift expert (experts.Expert.pick) grasping at `where(env)` with rotation mode `rot`."""
    where, rot = None, "yaw"

    def grasp_rot(self, arm, name):
        if self.rot == "yaw":
            return super().grasp_rot(arm, name)
        return topdown_rot(self.e.finger_dir(arm, self.e.obj_pos(name)))

    def pick(self, arm, name, along=0.0, lift=0.10):
        p = np.r_[self.where(self.e), self.e.obj_pos(name)[2]]
        R = self.grasp_rot(arm, name)
        yield from self.move({arm: (p + [0, 0, 0.10], R)})
        yield from self.move({arm: (p + [0, 0, 0.002], R)}, steps=10)
        yield from self.wait(self.GRASP_WAIT, grip={arm: 0.0})
        yield from self.move({arm: (p + [0, 0, lift], R)}, steps=10)


def successes(env, where, rot):
    k = 0
    for s in eval_sim.eval_seeds(0, a.episodes):
        env.reset(s)
        x = Perturbed(env)
        x.where, x.rot = where, rot
        for act in x.actions():
            env.step(act)
        k += env.success
    return k


target_xy = lambda e: e.obj_pos(e.layout.roles["target"])[:2]
if not a.head_from:
    env = sim.Env("lift_block", render=False)
    for rot in ("yaw", "natural"):
        for sigma in (0.0, 0.01, 0.015, 0.02):
            rng = np.random.default_rng(0)
            k = successes(env, lambda e: target_xy(e) + rng.normal(0, sigma, 2), rot)
            print(f"grasp rotation {rot:8s} xy noise std {100 * sigma:.1f} cm per axis: {k}/{a.episodes}")
else:
    from model import Policy
    policy = Policy.load(a.head_from)
    env, errors = sim.Env("lift_block", cameras=policy.cameras, image_size=policy.image_size), []

    def head_xy(e):  # at reset: the frame the expert starts from
        obs = e.observe()
        images, ids, mask, _, _ = policy._inputs([obs])
        with torch.no_grad():
            xy = policy.model.grounded_world(images, ids, mask)[0, :2].numpy()
        errors.append(100 * np.abs(xy - target_xy(e)))
        return xy
    k = successes(env, head_xy, "yaw")
    e = np.array(errors)
    print(f"expert grasping at the grounding head's estimate at reset ({a.head_from}): {k}/{a.episodes}; the "
          f"estimate's error per axis (x, y): mean {e.mean(0).round(2)} cm, rms {np.sqrt((e ** 2).mean(0)).round(2)} cm")
