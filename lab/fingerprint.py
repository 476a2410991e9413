"""A behaviour fingerprint of the whole pipeline, for refactors that must change nothing.

    python lab/fingerprint.py --out /tmp/after.json               # this checkout
    python lab/fingerprint.py --repo /tmp/old --out /tmp/before.json   # another revision (git worktree add /tmp/old REV)

Runs, through the command lines a user types, in a temporary folder: 3 lift_block demonstrations and 2 of the
twin's franka_pick_place; 40 steps of the lift_block recipe's policy (shipped front end, StaKe heads), 20 of a
from-scratch `tiny` policy on the images, and 6 each on stack_two's front end (keypoints read every step; one
token per object); 4 closed-loop episodes of the recipe policy. Prints and writes the SHA-256 of the
demonstrations' arrays, of every checkpoint's weights and EMA (names and values), their metrics lines, one
sampled chunk, and the per-episode outcomes. Two revisions with equal fingerprints behave the same on these paths
(to the bit). About 1.5 minutes on 2 cores. It uses only the top-level scripts, so it runs on old revisions too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def sh(repo: Path, *argv) -> None:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    r = subprocess.run([sys.executable, *map(str, argv)], cwd=repo, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"fingerprint: failed: python {' '.join(map(str, argv))}\n{r.stderr[-3000:]}")


def digest_arrays(items) -> str:
    h = hashlib.sha256()
    for name, a in items:
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def digest_folder(folder: Path) -> str:
    items = []
    for f in sorted(folder.glob("episode_*.npz")):
        with np.load(f, allow_pickle=False) as z:
            items += [(f"{f.name}/{k}", z[k]) for k in sorted(z.files)]
    return digest_arrays(items)


def digest_checkpoint(path: Path) -> dict:
    import torch
    ck = torch.load(path, map_location="cpu", weights_only=True)
    sd = lambda d: [(k, v.numpy()) for k, v in sorted(d.items())]
    metrics = (path.parent / "metrics.jsonl").read_text().splitlines()
    drop = ("samples_per_s",)  # a wall-clock rate
    lines = [json.dumps({k: v for k, v in json.loads(l).items() if k not in drop}, sort_keys=True) for l in metrics]
    return {"model": digest_arrays(sd(ck["model"])), "ema": digest_arrays(sd(ck["ema"])), "step": ck["step"],
            "metrics": hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16],
            "last_metrics": json.loads(lines[-1])}


def chunk(repo: Path, ckpt: Path, demos: Path) -> dict:
    code = f"""
import json, sys, numpy as np, torch
sys.path.insert(0, {str(repo)!r})
from model import Policy
p = Policy.load({str(ckpt)!r})
import data
ep = data.load_episode({str(demos / 'episode_000000.npz')!r})
t = 30
obs = dict(images={{c: ep['images'][c][t] for c in p.cameras}}, qpos=ep['qpos'][t], prev_qpos=ep['qpos'][t - 1],
           instruction=ep['instruction'])
out = p.predict_chunk([obs], generator=torch.Generator().manual_seed(0))
print(json.dumps(dict(sha=__import__('hashlib').sha256(out.tobytes()).hexdigest()[:16], first=out[0, 0, :4].round(5).tolist())))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                       env={**os.environ, "MUJOCO_GL": "egl"})
    if r.returncode:
        sys.exit(f"fingerprint: chunk failed\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="checkout to run (its scripts)")
    ap.add_argument("--out", default="")
    ap.add_argument("--tmp", default="", help="work folder (default: a fresh temporary one)")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="fingerprint_"))
    fp = {}
    demos, twin = tmp / "demos", tmp / "twin"
    sh(repo, "data.py", "generate", "--task", "lift_block", "--episodes", "3", "--seed", "0", "--grasp-natural",
       "--out", demos, "--workers", "1")
    sh(repo, "data.py", "generate", "--task", "franka_pick_place", "--episodes", "2", "--seed", "0", "--out", twin,
       "--workers", "1")
    fp["demos"], fp["twin_demos"] = digest_folder(demos), digest_folder(twin)
    policy, scratch = tmp / "policy", tmp / "scratch"
    sh(repo, "train.py", "--data", demos, "--out", policy, "--vision-from", repo / "frontends/lift_block.pt",
       "--preset", "small", "--stage-weight", "0.1", "--keyframe-weight", "0.1", "--freeze-vision", "--grounded",
       "--grounded-only", "--shift", "0", "--save-every", "20", "--steps", "40", "--symmetry", "--velocity",
       "--seed", "0", "--threads", "1", "--log-every", "10", "--batch-size", "8")
    sh(repo, "train.py", "--data", demos, "--out", scratch, "--preset", "tiny", "--steps", "20", "--seed", "1",
       "--threads", "1", "--log-every", "5", "--batch-size", "4")
    fp["policy"], fp["scratch"] = digest_checkpoint(policy / "ckpt.pt"), digest_checkpoint(scratch / "ckpt.pt")
    # the front end's other paths, on stack_two's (word order, two objects): keypoints + objects from the images
    # every step (not cached), and one token per object
    for name, flags in (("keypoints_grounded", ("--grounded", "--shift", "4")),
                        ("object_tokens", ("--grounded", "--grounded-only", "--object-tokens", "--shift", "0",
                                           "--freeze-vision", "--symmetry"))):
        sh(repo, "train.py", "--data", demos, "--out", tmp / name, "--vision-from", repo / "frontends/stack_two.pt",
           *flags, "--steps", "6", "--seed", "2", "--threads", "1", "--log-every", "2", "--batch-size", "4")
        fp[name] = digest_checkpoint(tmp / name / "ckpt.pt")
    fp["chunk"] = chunk(repo, policy / "ckpt.pt", demos)
    ev = tmp / "eval"
    sh(repo, "eval_sim.py", "--ckpt", policy / "ckpt.pt", "--task", "lift_block", "--out", ev, "--episodes", "4",
       "--noise-scale", "1", "--batch", "4", "--seed", "0", "--max-steps", "120")
    res = json.loads((ev / "results.json").read_text())
    drop = ("latency_ms_per_batched_call", "wall_s", "video")  # wall-clock figures and paths
    per_ep = [{k: v for k, v in e.items() if not k.startswith(drop)} for e in res["tasks"]["lift_block"]["per_episode"]]
    fp["episodes"] = per_ep
    fp["episodes_sha"] = hashlib.sha256(json.dumps(per_ep, sort_keys=True).encode()).hexdigest()[:16]
    print(json.dumps({k: v for k, v in fp.items() if k != "episodes"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(fp, indent=1) + "\n")


if __name__ == "__main__":
    main()
