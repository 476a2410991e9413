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
