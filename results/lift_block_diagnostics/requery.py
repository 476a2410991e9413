"""Diagnostic (not a test): a lift_block policy re-queried every `--every` steps, executing its latest chunk
('--mode latest') or ACT's temporal ensemble of all chunks covering the step ('--mode ensemble', weights
exp(-m * age)); `--binarize 1` snaps the grippers to 0/1 as model.Policy now does by default. eval_sim.py's
seeds, batches of 25 and noise stream ('--mode latest --every 10' reproduces eval_sim.py's count). `--gate`
(unused in the committed output) holds a gripper open while its arm moves faster than that many rad per step.
Outputs in requery_joint_symmetry.txt were printed by this file run from /tmp before it was committed, unchanged
but for this docstring and the sys.path line; the policy was called with binary_gripper off (the default then).

    MUJOCO_GL=egl python results/lift_block_diagnostics/requery.py CKPT --mode latest --every 10 --binarize 1
"""
import argparse, sys, time, collections
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
import numpy as np, torch
import eval_sim, sim
from model import Policy
ap = argparse.ArgumentParser()
ap.add_argument("ckpt"); ap.add_argument("--seed", type=int, default=0); ap.add_argument("--episodes", type=int, default=100)
ap.add_argument("--mode", default="ensemble"); ap.add_argument("--m", type=float, default=0.01)
ap.add_argument("--every", type=int, default=1); ap.add_argument("--window", type=int, default=0)
ap.add_argument("--gate", type=float, default=0.0); ap.add_argument("--binarize", type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(2)
policy = Policy.load(a.ckpt)
policy.binary_gripper = False  # --binarize decides (the Policy's default snaps since the tenth session)
H = policy.horizon
W = a.window or H
def run(seeds):
    envs = [sim.Env("lift_block", cameras=policy.cameras, image_size=tuple(policy.image_size)) for _ in seeds]
    obs = [e.reset(s) for e, s in zip(envs, seeds)]
    g = torch.Generator().manual_seed(int(seeds[0]))
    hist = collections.defaultdict(dict)  # env -> {t_query: chunk}
    done = [False]*len(seeds); prevq = [o["qpos"].copy() for o in obs]
    for t in range(sim.TASKS["lift_block"].max_steps):
        live = [i for i, d in enumerate(done) if not d]
        if not live: break
        if t % a.every == 0:
            pred = policy.predict_chunk([obs[i] for i in live], generator=g)
            for j, i in enumerate(live): hist[i][t] = pred[j]
        for i in live:
            acts, ws = [], []
            for tq, ch in hist[i].items():
                k = t - tq
                if 0 <= k < min(H, W):
                    acts.append(ch[k]); ws.append(np.exp(-a.m * (t - tq)))
            if a.mode == "latest":
                tq = max(tq for tq in hist[i] if tq <= t); act = hist[i][tq][t - tq].copy()
            else:
                ws = np.array(ws)[:, None]; act = (np.stack(acts) * ws).sum(0) / ws.sum()
            if a.binarize:
                for gi in sim.GRIPPER_INDICES: act[gi] = float(act[gi] >= 0.5)
            if a.gate:
                speed = np.abs(obs[i]["qpos"] - prevq[i]).reshape(2, 7)[:, :6].max(1)
                for arm, gi in enumerate(sim.GRIPPER_INDICES):
                    if act[gi] < 0.5 and obs[i]["qpos"][gi] > 0.9 and speed[arm] > a.gate: act[gi] = 1.0
            prevq[i] = obs[i]["qpos"].copy()
            ins = obs[i]["instruction"]; obs[i] = envs[i].step(act); obs[i]["instruction"] = ins
            if envs[i].success: done[i] = True
    return [(e.success, eval_sim.classify(e.success, e.stage, e.stages)) for e in envs]
seeds = eval_sim.eval_seeds(a.seed, a.episodes); res = []; t0 = time.time()
for i in range(0, a.episodes, 25): res += run(seeds[i:i+25])
print(a, sum(s for s, _ in res), collections.Counter(f for _, f in res), f"{time.time()-t0:.0f}s", flush=True)
