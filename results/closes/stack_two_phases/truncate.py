import sys, numpy as np, json, shutil
from pathlib import Path
sys.path.insert(0, '/work/main')
import data, segment
src, dst, keep_events, tail = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dst.mkdir(parents=True, exist_ok=True)
lens = []
for p in data.episode_paths(src):
    ep = data.load_episode(p)
    g = ep['action'][:, [6, 13]]
    ev = [int(t) for t, _, _ in segment.segment(g, levels=(0.0, 1.0)).events]
    end = min(len(ep['action']), ev[keep_events - 1] + tail)
    for k in ('qpos', 'action'):
        ep[k] = ep[k][:end]
    ep['images'] = {c: v[:end] for c, v in ep['images'].items()}
    data.save_episode(dst / p.name, ep)
    lens.append(end)
shutil.copy(src / 'done.json', dst / 'done.json')
print('lengths', np.percentile(lens, [0, 50, 100]))
