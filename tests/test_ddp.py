"""train.py under torchrun, 2 CPU processes (gloo): the single process's loss curve on the same global batch, to
float tolerance; a run stopped part-way resumes under torchrun to the same curve and weights."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from synthetic import make_dataset  # noqa: E402
from train import Options, train  # noqa: E402

torch.set_num_threads(1)
# T=20 against the tiny preset's horizon of 10: many chunks run past their episode's end, so the two halves of a
# batch hold different numbers of valid steps (what train.shard weighs the policy loss by)
KW = dict(preset="tiny", batch_size=8, steps=4, log_every=1, warmup=2, shift=2, threads=1, stage_weight=0.5,
          keyframe_weight=0.5)
TOL = 1e-5  # seen: metrics 1e-6 (one unit of the 6 decimals metrics.jsonl keeps), weights 3.7e-7


# every rank trains on each argument list in turn, in one process group (one launch spares the test two more starts
# of torch); a resume reads only the checkpoint, as in a new launch (test_train resumes in-process too)
RUNS = ("import json, sys, data, train, torch.distributed as dist\n"
        "for a in json.loads(sys.argv[1]): train.train(data.parse_options(train.Options, a, 'train.py', ''))\n"
        "dist.destroy_process_group()")


def torchrun(*runs):
    """The runs under `torchrun --nproc-per-node 2` (gloo); returns its (stdout, stderr). A hang (a collective one
    rank never reaches) fails after 5 minutes, and the launcher goes with its workers."""
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          "--no-python", sys.executable, "-c", RUNS, json.dumps(runs)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    assert p.returncode == 0, err[-3000:]
    return out, err


def argv(ds, out, *flags, **kw):
    return ["--data", str(ds), "--out", str(out), *flags,
            *[f"--{k.replace('_', '-')}={v}" for k, v in {**KW, **kw}.items()]]


def metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def max_difference(one: Path, two: Path) -> float:
    """The largest difference between two runs' per-step metrics (but the wall-clock rate) and final weights."""
    m1, m2 = metrics(one), metrics(two)
    assert [set(m) for m in m1] == [set(m) for m in m2]
    a, b = (torch.load(r / "ckpt.pt", weights_only=True) for r in (one, two))
    return max([abs(x[k] - y[k]) for x, y in zip(m1, m2) for k in x if k != "samples_per_s"] +
               [(a[p][k] - b[p][k]).abs().max().item() for p in ("model", "ema") for k in a[p]])


def test_two_processes_reproduce_one_and_resume(tmp_path):
    """StaKe heads on, stopped after 2 of 4 steps and resumed; and heads off, which leaves the last backbone block
    unused by the forward (DDP's static_graph)."""
    ds = make_dataset(tmp_path / "data", n_episodes=2, T=20)
    plain = dict(stage_weight=0, keyframe_weight=0, steps=2)
    train(Options(data=[str(ds)], out=str(tmp_path / "one"), **KW))
    train(Options(data=[str(ds)], out=str(tmp_path / "one_plain"), **{**KW, **plain}))
    out, _ = torchrun(argv(ds, tmp_path / "two", stop_after=2), argv(ds, tmp_path / "two", "--resume"),
                      argv(ds, tmp_path / "two_plain", **plain))
    assert out.count("start step 0") == 2 and out.count("start step 2") == 1  # rank 0 alone prints
    assert [m["step"] for m in metrics(tmp_path / "two")] == [1, 2, 3, 4]
    assert len({m["policy_loss"] for m in metrics(tmp_path / "one")}) == 4  # the curve moves: no constant's match
    for run in ("two", "two_plain"):
        diff = max_difference(tmp_path / run.replace("two", "one"), tmp_path / run)
        assert diff <= TOL, f"{run}: metrics or weights differ from one process's by {diff}"
    assert (tmp_path / "two" / "loss.png").is_file()


def test_batch_must_split_evenly(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="--batch-size 8 must be a multiple of the 3 torchrun processes"):
        Options(data=["x"], batch_size=8)
