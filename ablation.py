"""The StaKe ablation (issue 6): pretrain one base, fine-tune four variants per seed, evaluate, report.

    python ablation.py --preset cpu|gpu|tiny [--only data|pretrain|finetune|eval|report]
                       [--seed all|N|base|sweep] [--out DIR] [--dry-run] [--FIELD VALUE ...]

Protocol (every number comes from PRESETS below; any of them can be overridden with its flag):
  data      data.py generate: `demos` successful expert episodes per task, seeds 0, 1, ... (shared by all runs)
  pretrain  train.py: one multi-task base on all tasks, no StaKe heads (--stage-weight 0 --keyframe-weight 0)
  finetune  train.py --init-from the base, per training seed: none, SS, KS, SS+KS (only the loss weights
            differ; train.py draws the data order, augmentation and flow noise from generators seeded by --seed
            alone and the StaKe heads from their own generator, so the four start from the same weights and
            see the same batches), plus a grid of SS+KS loss weights on seed `seeds[0]` (the sweep)
  eval      eval_sim.py on evaluation seed block 0 for every policy (the base too): the same episodes for all
  report    eval_sim.compare over the variants (seeds pooled and spread), the sweep grid, summary.json

Runs execute in this process (one import of torch and one decode of the demonstrations for the whole
invocation); each is recorded in OUT/runs/NAME.json with the exact stand-alone command that reproduces it
and the git revision. A run whose record and output exist is skipped; a record made by another command is
an error (delete it and the run's folder to redo it); a killed training continues from its last checkpoint
(train.py --resume). `--only STAGE` and `--seed` cut the protocol into short invocations; each prints a
compact JSON line. Heavy files go to runs/ablation/PRESET and data/ablation/PRESET (git-ignored).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import data
from data import opt

ALL_TASKS = ["lift_block", "place_block", "lift_bar", "handover", "stack_two", "stack_three"]
PRESETS = {  # the protocol's numbers; "gpu" is the full protocol, the others are reductions of it
    "gpu": dict(tasks=ALL_TASKS, demos=50, cameras=["top", "left_wrist", "right_wrist"], image_size=96,
                model="small", batch_size=64, pretrain_steps=6000, pretrain_lr=3e-4, finetune_steps=1500,
                finetune_lr=1e-4, seeds=[0, 1, 2], stage_weight=0.1, keyframe_weight=0.1, sweep_task="stack_three",
                sweep_stage_weights=[0.01, 1.0], sweep_keyframe_weights=[0.01, 1.0], eval_episodes=100,
                eval_max_steps=0, eval_batch=8, workers=14, device="cuda", threads=0, save_every=500),
    "cpu": dict(tasks=["lift_block", "place_block"], demos=30, cameras=["top"], image_size=96,
                model="small", batch_size=32, pretrain_steps=3000, pretrain_lr=3e-4, finetune_steps=600,
                finetune_lr=1e-4, seeds=[0, 1], stage_weight=0.1, keyframe_weight=0.1, sweep_task="place_block",
                sweep_stage_weights=[0.01, 1.0], sweep_keyframe_weights=[0.01, 1.0], eval_episodes=40,
                eval_max_steps=0, eval_batch=20, workers=2, device="cpu", threads=0, save_every=200),
    "tiny": dict(tasks=["lift_block"], demos=2, cameras=["top"], image_size=32,  # tests only: measures nothing
                 model="tiny", batch_size=4, pretrain_steps=3, pretrain_lr=1e-3, finetune_steps=2,
                 finetune_lr=1e-3, seeds=[0], stage_weight=0.1, keyframe_weight=0.1, sweep_task="lift_block",
                 sweep_stage_weights=[1.0], sweep_keyframe_weights=[0.1], eval_episodes=2,
                 eval_max_steps=20, eval_batch=2, workers=1, device="cpu", threads=1, save_every=1000),
}
STAGES = ["data", "pretrain", "finetune", "eval", "report"]
VARIANTS = ["none", "SS", "KS", "SS+KS"]


class AblationError(RuntimeError):
    """A run failed or the results folder disagrees with the options; the message says what to do."""


def popt(help):  # a protocol number: its default is the --preset's (parse_options)
    return field(default=None, metadata={"help": help + " (default: the preset's)"})


@dataclass
class Options:
    preset: str = opt("cpu", f"protocol size: {', '.join(PRESETS)} (gpu = the full protocol)")
    only: str = opt("", f"run one stage only: {', '.join(STAGES)} (default: all, in order)")
    seed: str = opt("all", "finetune/eval runs to do: 'all', one training seed (e.g. 0), 'base' or 'sweep'")
    out: str = opt("", "results: per-run JSON, tables, charts, summary (default results/ablation/PRESET)")
    runs_dir: str = opt("", "checkpoints (default runs/ablation/PRESET, git-ignored)")
    data_dir: str = opt("", "demonstrations (default data/ablation/PRESET, git-ignored)")
    dry_run: bool = opt(False, "print every run's command and whether it is done; run nothing")
    tasks: list = popt("tasks: pretraining and fine-tuning data, and evaluation")
    demos: int = popt("demonstrations per task (seeds 0, 1, ...; the same data for every run)")
    cameras: list = popt("cameras recorded and used")
    image_size: int = popt("square image size in pixels")
    model: str = popt("train.py --preset of the base policy (tiny, small, base)")
    batch_size: int = popt("samples per training step (pretraining and fine-tuning)")
    pretrain_steps: int = popt("optimiser steps of the base")
    pretrain_lr: float = popt("peak learning rate of the base")
    finetune_steps: int = popt("optimiser steps of every fine-tuning run (the same for all variants)")
    finetune_lr: float = popt("peak learning rate of fine-tuning")
    seeds: list = popt("training seeds of the fine-tuning runs")
    stage_weight: float = popt("StaKe stage-loss weight of SS and SS+KS")
    keyframe_weight: float = popt("StaKe keyframe-loss weight of KS and SS+KS")
    sweep_task: str = popt("the long task the loss-weight sweep is evaluated on")
    sweep_stage_weights: list = popt("stage weights of the SS+KS sweep grid (empty: no sweep)")
    sweep_keyframe_weights: list = popt("keyframe weights of the SS+KS sweep grid (empty: no sweep)")
    eval_episodes: int = popt("evaluation episodes per task and policy (evaluation seed block 0)")
    eval_max_steps: int = popt("override every task's step limit in evaluation (0 = the task's own)")
    eval_batch: int = popt("environments per evaluation job (also fixes the flow-noise seeding)")
    workers: int = popt("processes for data generation and evaluation")
    device: str = popt("torch device for training and evaluation: cpu or cuda")
    threads: int = popt("torch CPU threads for training (0 = torch's default)")
    save_every: int = popt("training steps between checkpoints (a killed run resumes from the last)")

    def __post_init__(self):
        import sim
        seeds_ok = self.seed in ("all", "base", "sweep") or (self.seed.lstrip("-").isdigit() and int(self.seed) in self.seeds)
        checks = [(self.only in ("", *STAGES), f"--only must be one of {STAGES}"),
                  (seeds_ok, f"--seed must be 'all', 'base', 'sweep' or one of --seeds {self.seeds}; got '{self.seed}'"),
                  (not (bad := [t for t in self.tasks if t not in sim.TASKS]), f"unknown task(s) {bad}; known: {list(sim.TASKS)}"),
                  (bool(self.tasks) and bool(self.seeds), "--tasks and --seeds must not be empty"),
                  (min(self.demos, self.pretrain_steps, self.finetune_steps, self.eval_episodes, self.workers) > 0,
                   "--demos, --pretrain-steps, --finetune-steps, --eval-episodes and --workers must be > 0"),
                  (self.device in ("cpu", "cuda"), f"--device must be cpu or cuda, got '{self.device}'"),
                  (not self.sweep_points()[1:] or self.sweep_task in self.tasks,
                   f"--sweep-task '{self.sweep_task}' must be one of --tasks {self.tasks}")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def variants(self) -> dict:
        w, k = self.stage_weight, self.keyframe_weight
        return {"none": (0.0, 0.0), "SS": (w, 0.0), "KS": (0.0, k), "SS+KS": (w, k)}

    def sweep_points(self) -> list:  # the SS+KS point first, then the grid
        grid = [(s, k) for s in self.sweep_stage_weights for k in self.sweep_keyframe_weights]
        main = (self.stage_weight, self.keyframe_weight)
        return [main] + [p for p in grid if p != main] if grid else [main]


def parse_options(argv=None) -> Options:
    """Options from flags; the protocol's numbers default to those of --preset."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="cpu")
    preset = pre.parse_known_args(argv)[0].preset
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {list(PRESETS)}, got '{preset}'")
    return data.parse_options(Options, argv, "ablation.py", __doc__.split("\n")[0], copy.deepcopy(PRESETS[preset]))


def reductions(o: Options) -> list:
    """Every protocol number that differs from the full protocol (the gpu preset), in words."""
    return [f"{k}: {getattr(o, k)} (full protocol: {v})" for k, v in PRESETS["gpu"].items()
            if getattr(o, k) != v and k not in ("workers", "eval_batch", "device", "threads", "save_every")]


# ----------------------------------------------------------------------------- the plan: one Job per run

@dataclass
class Job:
    name: str      # unique; OUT/runs/NAME.json records it
    stage: str     # data | pretrain | finetune | eval
    tag: str       # what --seed selects: a training seed, 'base', 'sweep' ('all' for data and pretrain)
    script: str    # data.py | train.py | eval_sim.py
    argv: list     # the script's arguments: the run is exactly `python SCRIPT ARGV`
    output: Path   # present when the run has finished
    needs: list = field(default_factory=list)  # the Jobs whose outputs this run reads

    @property
    def command(self) -> str:
        return "python " + shlex.join([self.script, *map(str, self.argv)])

    def config(self) -> list:
        """The command without the options that cannot change the result, and the configs of the runs it
        reads: a run whose base was redone with other options no longer counts as done."""
        a, skip = list(map(str, self.argv)), {"--workers", "--threads"}
        return [x for i, x in enumerate(a) if x not in skip and (i == 0 or a[i - 1] not in skip)] + \
            [n.config() for n in self.needs]


def wname(ws: float, wk: float) -> str:
    return f"ss{ws:g}_ks{wk:g}"


def plan(o: Options, out: Path, runs: Path, dat: Path) -> list:
    jobs = [Job(f"data__{t}", "data", "all", "data.py",
                ["generate", "--task", t, "--episodes", o.demos, "--out", dat / t, "--seed", 0, "--workers", o.workers,
                 "--cameras", *o.cameras, "--image-size", o.image_size, o.image_size], dat / t / "meta.json")
            for t in o.tasks]
    folders = [dat / t for t in o.tasks]
    common = ["--batch-size", o.batch_size, "--save-every", o.save_every, "--device", o.device, "--resume",
              *(["--threads", o.threads] if o.threads else [])]
    base = runs / "pretrain" / "ckpt.pt"
    jobs.append(Job("pretrain", "pretrain", "all", "train.py",
                    ["--data", *folders, "--out", base.parent, "--steps", o.pretrain_steps, "--preset", o.model,
                     "--seed", 0, "--stage-weight", 0, "--keyframe-weight", 0, "--lr", o.pretrain_lr,
                     "--cameras", *o.cameras, *common], base, list(jobs)))
    pretrain = jobs[-1]

    def evaluate(name, ckpt, tasks, tag, needs):
        return Job(name, "eval", tag, "eval_sim.py",
                   ["--ckpt", ckpt, "--task", *tasks, "--episodes", o.eval_episodes, "--out", out / "eval" / name[6:],
                    "--seed", 0, "--workers", o.workers, "--batch", o.eval_batch, "--device", o.device,
                    *(["--max-steps", o.eval_max_steps] if o.eval_max_steps else [])],
                   out / "eval" / name[6:] / "results.json", [needs])

    def finetune(ws, wk, seed, tag):
        run = f"{wname(ws, wk)}__s{seed}"
        ft = Job(f"finetune__{run}", "finetune", tag, "train.py",
                 ["--data", *folders, "--out", runs / "finetune" / run, "--steps", o.finetune_steps, "--seed", seed,
                  "--stage-weight", ws, "--keyframe-weight", wk, "--init-from", base, "--lr", o.finetune_lr, *common],
                 runs / "finetune" / run / "ckpt.pt", [pretrain])
        return ft, evaluate(f"eval__{run}", ft.output, o.tasks if tag != "sweep" else [o.sweep_task], tag, ft)

    evals = [evaluate("eval__base", base, o.tasks, "base", pretrain)]
    for seed in o.seeds:
        for ws, wk in dict.fromkeys(o.variants().values()):
            ft, ev = finetune(ws, wk, seed, str(seed))
            jobs.append(ft), evals.append(ev)
    for ws, wk in o.sweep_points()[1:]:
        if (ws, wk) not in o.variants().values():
            ft, ev = finetune(ws, wk, o.seeds[0], "sweep")
            jobs.append(ft), evals.append(ev)
    return jobs + evals


# ----------------------------------------------------------------------------- running

def is_done(job: Job, records: Path) -> bool:
    rec = records / f"{job.name}.json"
    if not rec.is_file():
        return False
    was = json.loads(rec.read_text())
    if was["config"] != job.config():
        raise AblationError(f"{rec} was recorded for another command or from another base run:\n  was: {was['command']}\n"
                            f"  now: {job.command}\ndelete {rec} and {job.output.parent} (and what was made from it) to "
                            f"redo it with these options, or pass another --out and --runs-dir")
    return job.output.is_file()


def share_loaded_demos(dataset) -> None:
    """The runs of one invocation read the same folders: decode them once (dataset.load_folders is pure; the
    only part train() changes, meta, is copied for every caller)."""
    load, cache = dataset.load_folders, {}

    def cached(folders, cameras=None, stage_label="per-arm", images=True):
        key = (tuple(map(str, folders)), tuple(cameras or ()), stage_label, images)
        if key not in cache:
            cache.clear()
            cache[key] = load(folders, cameras, stage_label, images)
        return {**cache[key], "meta": copy.deepcopy(cache[key]["meta"])}
    if not getattr(dataset.load_folders, "shared", False):
        cached.shared = True
        dataset.load_folders = cached


def run_job(job: Job, o: Options, records: Path) -> dict:
    print(f"\n== {job.name}\n$ {job.command}", flush=True)
    t0 = time.time()
    try:
        if job.script == "data.py":
            data.main([str(a) for a in job.argv])
            result = json.loads(job.output.read_text())["generation_stats"]
        elif job.script == "train.py":
            import torch
            import dataset
            import train
            share_loaded_demos(dataset)
            train.train(data.parse_options(train.Options, [str(a) for a in job.argv]))
            lines = (job.output.parent / "metrics.jsonl").read_text().splitlines()
            result = {"last_metrics": json.loads(lines[-1]) if lines else {}}
            gc.collect(), torch.cuda.empty_cache() if torch.cuda.is_available() else None
        else:
            import eval_sim
            res = eval_sim.evaluate(data.parse_options(eval_sim.EvalConfig, [str(a) for a in job.argv]), command=job.command)
            result = {t: {k: v for k, v in r.items() if k != "per_episode"} for t, r in res["tasks"].items()}
    except SystemExit as e:  # data.py reports its DataError and exits 2
        raise AblationError(f"{job.name} failed (exit {e.code}); command: {job.command}") from None
    except (ValueError, FileNotFoundError) as e:
        raise AblationError(f"{job.name} failed: {e}\n  command: {job.command}") from None
    if not job.output.is_file():
        raise AblationError(f"{job.name} finished without writing {job.output}; command: {job.command}")
    rec = dict(name=job.name, stage=job.stage, command=job.command, config=job.config(), git_revision=data.git_revision(),
               preset=o.preset, wall_s=round(time.time() - t0, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S"), result=result)
    records.mkdir(parents=True, exist_ok=True)
    data.atomic_write_bytes(records / f"{job.name}.json", lambda f: f.write(json.dumps(rec, indent=1, default=str).encode()))
    return rec


# ----------------------------------------------------------------------------- report

def sweep_chart(path: Path, o: Options, cells: dict) -> None:
    """The sweep grid as a heat map: success rate on the sweep task per (stage weight, keyframe weight)."""
    import plots
    ss, ks = sorted({s for s, _ in cells}), sorted({k for _, k in cells})
    plots.heatmap(path, f"SS+KS sweep on {o.sweep_task}: success rate (k/n)", [f"stage {s:g}" for s in ss],
                  [f"{k:g}" for k in ks], [[c["success_rate"] if (c := cells.get((s, k))) else None for k in ks] for s in ss],
                  [[f"{c['success_rate']:.2f} ({c['successes']}/{c['episodes']})" if (c := cells.get((s, k))) else ""
                    for k in ks] for s in ss], col_title="keyframe weight ->")


def report(o: Options, jobs: list, out: Path, records: Path) -> dict:
    import eval_sim
    done = {j.name: j for j in jobs if j.stage == "eval" and is_done(j, records)}
    ev = lambda w, s: f"eval__{wname(*w)}__s{s}"  # noqa: E731
    seeds = [s for s in o.seeds if all(ev(w, s) in done for w in o.variants().values())]
    dirs = [[done[ev(o.variants()[v], s)].output.parent for s in seeds] for v in VARIANTS] if seeds else []
    labels = list(VARIANTS) if seeds else []
    if "eval__base" in done:
        dirs, labels = dirs + [[done["eval__base"].output.parent]], labels + ["base"]
    if not dirs:
        raise AblationError("no evaluation has finished yet: run --only eval first")
    md = eval_sim.compare(dirs, str(out), labels)
    cmp = json.loads((out / "compare.json").read_text())
    cells = {}
    for ws, wk in o.sweep_points():
        name = ev((ws, wk), o.seeds[0])
        if name in done:
            x = json.loads(done[name].output.read_text())["tasks"][o.sweep_task]
            cells[ws, wk] = {k: x[k] for k in ("successes", "episodes", "success_rate", "wilson95", "failure_types")}
    sweep_md = []
    if len(o.sweep_points()) > 1:
        ss, ks = sorted({s for s, _ in cells}), sorted({k for _, k in cells})
        sweep_md = [f"## Loss-weight sweep (SS+KS, training seed {o.seeds[0]}, task {o.sweep_task})", "",
                    "Success rate [Wilson 95%] (successes / episodes); rows: stage weight, columns: keyframe weight.", "",
                    "| stage \\ keyframe | " + " | ".join(f"{k:g}" for k in ks) + " |", "|" + "---|" * (1 + len(ks))]
        for s in ss:
            sweep_md.append(f"| {s:g} | " + " | ".join(
                f"{c['success_rate']:.2f} [{c['wilson95'][0]:.2f}, {c['wilson95'][1]:.2f}] ({c['successes']}/{c['episodes']})"
                if (c := cells.get((s, k))) else "-" for k in ks) + " |")
        if cells:
            sweep_chart(out / "sweep.png", o, cells)
    missing = [j.name for j in jobs if j.stage == "eval" and j.name not in done]
    red = reductions(o)
    head = [f"# StaKe ablation, preset `{o.preset}`", "",
            ("**Reduced protocol.** It differs from the full protocol (the gpu preset) in: " + "; ".join(red) + "."
             if red else "The full protocol."), "",
            f"Git revision {data.git_revision()}. Every run's command: `{records}/*.json`. Training seeds in the "
            f"tables: {seeds}. " + (f"**Not finished:** {', '.join(missing)}." if missing else "All runs finished."), ""]
    text = "\n".join(head) + "\n" + md + ("\n" + "\n".join(sweep_md) + "\n" if sweep_md else "")
    data.atomic_write_bytes(out / "report.md", lambda f: f.write(text.encode()))
    recs = [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]
    summary = dict(preset=o.preset, reduced=red, options=protocol(o), git_revision=data.git_revision(),
                   seeds_reported=seeds, missing=missing, compare=cmp,
                   sweep=[{"stage_weight": s, "keyframe_weight": k, **c} for (s, k), c in cells.items()],
                   wall_s_by_stage={st: round(sum(r["wall_s"] for r in recs if r["stage"] == st), 1) for st in STAGES[:4]},
                   runs={r["name"]: r["command"] for r in recs},
                   inputs={n: done[n].output.stat().st_mtime_ns for n in sorted(done)})
    data.atomic_write_bytes(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=1, default=str).encode()))
    return summary


def report_is_current(o: Options, jobs: list, out: Path, records: Path) -> bool:
    p = out / "summary.json"
    if not p.is_file():
        return False
    was = json.loads(p.read_text())
    now = {j.name: j.output.stat().st_mtime_ns for j in jobs if j.stage == "eval" and is_done(j, records)}
    return was.get("inputs") == now and was.get("options") == protocol(o)


def protocol(o: Options) -> dict:  # the options that shape the results (not which part this invocation runs)
    return {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(o))).items() if k not in ("only", "seed", "dry_run")}


# ----------------------------------------------------------------------------- main

def ablate(o: Options) -> dict:
    out = Path(o.out or f"results/ablation/{o.preset}")
    runs, dat = Path(o.runs_dir or f"runs/ablation/{o.preset}"), Path(o.data_dir or f"data/ablation/{o.preset}")
    records = out / "runs"
    jobs = plan(o, out, runs, dat)
    by_name = {j.name: j for j in jobs}
    chosen = [j for j in jobs if (not o.only or j.stage == o.only)
              and (o.seed == "all" or j.stage in ("data", "pretrain") or j.tag == o.seed)]
    t0, ran = time.time(), []
    skipped = [j.name for j in chosen if is_done(j, records)]
    todo = [j for j in chosen if j.name not in skipped]
    if o.dry_run:
        print("\n".join([f"done  {by_name[n].command}" for n in skipped] + [f"todo  {j.command}" for j in todo]))
    elif any(j.stage != "data" for j in todo):
        import torch
        import train  # noqa: F401  torch and timm first: importing torchvision after a MuJoCo EGL context crashes
        if o.device == "cuda" and not torch.cuda.is_available():
            raise AblationError(f"--device cuda (preset {o.preset}) but torch sees no CUDA device: use --preset cpu")
    for job in todo if not o.dry_run else []:
        for n in job.needs:
            if not is_done(n, records):
                raise AblationError(f"{job.name} needs {n.name}, which has not finished: run "
                                    f"`python ablation.py --preset {o.preset} --only {n.stage}` first")
        run_job(job, o, records)
        ran.append(job.name)
    reported = False
    if o.only in ("", "report") and o.seed == "all" and not o.dry_run:
        if report_is_current(o, jobs, out, records):
            skipped.append("report")
        else:
            report(o, jobs, out, records)
            reported = True
    progress = {s: f"{sum(is_done(j, records) for j in jobs if j.stage == s)}/{sum(j.stage == s for j in jobs)}"
                for s in STAGES[:4]}
    summary = dict(preset=o.preset, only=o.only or "all", seed=o.seed, ran=len(ran), skipped=len(skipped),
                   reported=reported, progress=progress, wall_s=round(time.time() - t0, 1), out=str(out),
                   reduced=bool(reductions(o)))
    if not ran and not reported and not o.dry_run:
        print(f"everything selected is done: {len(skipped)} skipped, nothing run ({out})")
    print(json.dumps(summary))
    return summary


def main(argv=None) -> int:
    try:
        ablate(parse_options(argv))
    except (AblationError, ValueError) as e:
        print(f"\nablation.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
