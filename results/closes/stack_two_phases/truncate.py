"""Cut each demonstration of a folder after its K-th gripper event (+ TAIL steps), into a new episode folder.

    python results/closes/stack_two_phases/truncate.py SRC DST K TAIL   # K = 2 or 3, TAIL = 12 for these runs
"""
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
import data  # noqa: E402
from eval_sim import gripper_events  # noqa: E402  (the one way the project reads gripper events)

src, dst, keep_events, tail = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
grip = [int(i) for i in data.load_meta(src)["gripper_indices"]]
dst.mkdir(parents=True, exist_ok=True)
lens = []
for p in data.episode_paths(src):
    ep = data.load_episode(p)
    end = min(len(ep["action"]), gripper_events(ep["action"], grip)[keep_events - 1] + tail)
    ep["qpos"], ep["action"] = ep["qpos"][:end], ep["action"][:end]
    ep["images"] = {c: v[:end] for c, v in ep["images"].items()}
    data.save_episode(dst / p.name, ep)
    lens.append(end)
for f in ("meta.json", "done.json"):
    shutil.copy(src / f, dst / f)
print("lengths", np.percentile(lens, [0, 50, 100]))
