"""The StaKe ablation on the recipes: do stage and keyframe supervision improve a policy that works, and more
so on tasks with more gripper events?

    python lab/ablation.py --preset cpu              # runs for at most --budget-min minutes; rerun to continue
    python lab/ablation.py --preset cpu --dry-run    # every run's command, done or to do
    python lab/ablation.py --preset cpu --only report
    python lab/ablation.py --preset cpu --only data; python lab/ablation.py --preset cpu --shard 0/2 &
    python lab/ablation.py --preset cpu --shard 1/2    # two at once: on 2 cores each training keeps its speed
    python lab/ablation.py --preset pixels-cpu --only pilot   # the paper's setting: is it worth the study? (OUT/pilot.json)
    python stats.py power --base 0.5 --seeds 5 --episodes 200   # the gain such a design can detect

Protocol, per task (a recipe of recipe.py; the tasks whose base success lies in 0.15-0.9):
  data   the recipe's demonstrations, shared by every run of the task
  train  the recipe's policy on its shipped front end, per variant and training seed: none (weights 0, 0),
         SS (w, 0), KS (0, k), SS+KS (w, k). Only the loss weights differ: a training seed fixes the initial
         weights, the batches and the flow noise whatever the weights (train.py draws the StaKe heads from their
         own generator; tests/test_ablation.py checks it by hashing)
  eval   the recipe's evaluator on the same `episodes` held-out seeds (evaluation block 0) for every policy
  sweep  SS+KS at the grid's other loss weights on `sweep_task`, training seed 0
  report per task and variant the success rate, its Wilson interval, the mean over training seeds and its
         spread; the gain over none by the primary analysis (stats.paired_t: a t interval on the per-seed
         differences, the sign-flip test) and pooled over tasks (stats.pooled_gain), the McNemar tests per seed
         and pooled (diagnostics.compare), the gain against gripper events, failure types, the simulation
         calibrated on the none arms (stats.calibrate) and the primary test's power (stats.power); the
         analysis's text and tables are lab/analysis.py's

Two designs (--design; docs/pixels.md): "frozen" (presets cpu, gpu), the recipes' policy on the frozen front end's
object positions, the state in the prefix where the StaKe queries read it; "pixels" (pixels-cpu, pixels-gpu), the
paper's setting: the front end fine-tuned from the pixels, the state in the action expert (train_flags). Deviation
from the paper, whose base is a VLA pretrained on robot data: ours is the grounding front end (ground.py).
The pilot (--only pilot, lab/pilot.py) comes first: the study's SS+KS seed 0 policies against the issue's criteria.

Each run executes in this process and is recorded in OUT/runs/NAME.json with the stand-alone command that
reproduces it and the git revision. A recorded run whose output exists is skipped, and so is one whose every
user is done (a fresh clone has the evaluations but not the checkpoints); a record made by another command is an
error; a killed training continues from its checkpoint (train.py --resume). An invocation stops
starting runs once --budget-min minutes have passed, and stops a training still running then as Ctrl-C does
(train.py saves its checkpoint at the end of the step; stop_at): the next invocation resumes it, so a long
training runs in pieces. It writes the report of what is done and prints one line of JSON. Checkpoints go to
runs/ablation/PRESET, demonstrations to data/ablation/PRESET (git-ignored).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""): sys.path[0] = str(Path(__file__).resolve().parents[1])   # python lab/ablation.py

import data  # noqa: E402
from data import opt  # noqa: E402
from lab import pilot  # noqa: E402
from lab.analysis import (ANALYSIS, PRIMARY, calibration_lines, headline_gains, pooled_gains,  # noqa: E402
                          power_line, power_of_design, strip_bootstrap)
from lab.recipe import RECIPES, ROOT  # noqa: E402

VARIANTS = ["none", "SS", "KS", "SS+KS"]
# options added with "pixels", at the values of the earlier protocol
FROZEN = dict(design="frozen", solo_tasks=0, vision_lr_scale=1.0, task_steps={})
PIXELS = dict(  # the paper's setting (design "pixels"); the numbers of the study
    # handover (4 events) and the twin's franka_pick_place, as the issue suggests; the pilot passes on both
    # (results/ablation/pixels-cpu/pilot.json)
    tasks=["handover", "franka_pick_place"], seeds={"none": 10, "SS+KS": 10, "SS": 5, "KS": 5}, solo_tasks=1,
    episodes=200, stage_weight=0.1, keyframe_weight=0.1, sweep_task="handover", sweep=[], demos=0, steps=0,
    design="pixels", vision_lr_scale=0.1,  # pi0-style: the pretrained part at a tenth of the rate
    # handover's pilot at the recipe's 6000 steps agreed on 0.899 of the probed steps (< 0.9), lowest in the
    # failed rollouts with many gripper events (docs/findings.md): twice the steps
    task_steps={"handover": 12000})
PRESETS = {  # the protocol's numbers; "gpu" is the same protocol with more seeds
    # every recipe with base success in 0.15-0.9 (README): 1, 2 and 4 gripper events, two twin tasks; appended
    # tasks run after the others, so a task added later leaves the runs done so far valid
    "cpu": dict(tasks=["lift_block", "franka_pick_place", "handover", "lift_bar", "franka_put_in_bin"], seeds={"none": 5, "SS+KS": 5, "SS": 3, "KS": 3},
                episodes=200, stage_weight=0.1, keyframe_weight=0.1, sweep_task="handover",
                sweep=[[0.01, 0.01], [1.0, 1.0]], demos=0, steps=0, workers=2, device="cpu", budget_min=8.0),
    "gpu": dict(tasks=["lift_block", "franka_pick_place", "handover", "lift_bar", "franka_put_in_bin"], seeds={"none": 10, "SS+KS": 10, "SS": 5, "KS": 5},
                episodes=200, stage_weight=0.1, keyframe_weight=0.1, sweep_task="handover",
                sweep=[[0.01, 0.01], [0.03, 0.03], [0.3, 0.3], [1.0, 1.0]], demos=0, steps=0, workers=14,
                device="cuda", budget_min=9.0),
    "tiny": dict(tasks=["lift_block"], seeds={"none": 2, "SS+KS": 2, "SS": 1, "KS": 1},  # tests: measures nothing
                 episodes=2, stage_weight=0.1, keyframe_weight=0.1, sweep_task="lift_block", sweep=[[1.0, 1.0]],
                 demos=2, steps=2, workers=1, device="cpu", budget_min=0.0),
    # the same study on either machine, in pieces of at most about 9 minutes (8 and a run that had started)
    "pixels-cpu": dict(PIXELS, workers=2, device="cpu", budget_min=8.0),
    "pixels-gpu": dict(PIXELS, workers=14, device="cuda", budget_min=8.0),  # the same batch (32) as on the CPU
    "pixels-tiny": dict(PIXELS, tasks=["lift_block"], seeds={"none": 1, "SS+KS": 1, "SS": 1, "KS": 1},  # tests
                        sweep_task="lift_block", episodes=2, demos=2, steps=2, workers=1, device="cpu", budget_min=0.0),
}
MIN_PIECE_S = 60          # a training gets at least this long per invocation, whatever is left of the budget
PRESETS = {k: {**FROZEN, **v} for k, v in PRESETS.items()}
STAGES = ["data", "train", "eval"]
JSON_OPTIONS = ("seeds", "sweep", "task_steps")  # given as JSON on the command line


class AblationError(RuntimeError):
    """A run failed or the results folder disagrees with the options; the message says what to do."""


def popt(help):  # a protocol number: its default is the --preset's (parse_options)
    return field(default=None, metadata={"help": help + " (default: the preset's)"})


@dataclass
class Options:
    preset: str = opt("cpu", f"protocol size: {', '.join(PRESETS)}")
    only: str = opt("", f"run one stage only: {', '.join(STAGES)}, report, or pilot (default: the study, in order)")
    out: str = opt("", "results: per-run JSON, tables, charts, summary (default results/ablation/PRESET)")
    runs_dir: str = opt("", "checkpoints (default runs/ablation/PRESET, git-ignored)")
    data_dir: str = opt("", "demonstrations (default data/ablation/PRESET, git-ignored)")
    dry_run: bool = opt(False, "print every run's command and whether it is done; run nothing")
    shard: str = opt("", "K/N: only trainings K, K+N, K+2N, ... of the plan and their evaluations, for N invocations "
                     "side by side (on 2 cores two 1-thread trainings each keep their speed); --only data first")
    tasks: list = popt("recipes (tasks) of the ablation")
    seeds: dict = popt("training seeds per variant, 0 .. n-1 (JSON, e.g. '{\"none\": 5, ...}')")
    episodes: int = popt("evaluation episodes per policy (held-out seeds of block 0, the same for every policy)")
    stage_weight: float = popt("StaKe stage-loss weight of SS and SS+KS")
    keyframe_weight: float = popt("StaKe keyframe-loss weight of KS and SS+KS")
    sweep_task: str = popt("the task of the loss-weight sweep")
    sweep: list = popt("(stage, keyframe) weights of the sweep's other SS+KS points (JSON list of pairs)")
    demos: int = popt("demonstrations per task (0: the recipe's)")
    steps: int = popt("training steps of every policy (0: a task's --task-steps, else its recipe's)")
    task_steps: dict = popt("training steps per task where not the recipe's (JSON, e.g. '{\"handover\": 12000}')")
    workers: int = popt("processes for data generation and evaluation")
    device: str = popt("torch device for training and evaluation: cpu or cuda")
    budget_min: float = popt("start no run after this many minutes (0: no limit) and stop a training then (it "
                             "resumes next time; at least MIN_PIECE_S per invocation); another run started finishes")
    design: str = popt("'frozen' (frozen front end's positions, state in the prefix) or 'pixels' (the paper's setting)")
    solo_tasks: int = popt("SS and KS alone run on the first N tasks (0: on every task)")
    vision_lr_scale: float = popt("design pixels: the front end's learning rate as a fraction of the policy's")

    def __post_init__(self):
        for name in JSON_OPTIONS:
            if isinstance(getattr(self, name), str):
                setattr(self, name, json.loads(getattr(self, name)))
        shard = re.fullmatch(r"(\d+)/(\d+)", self.shard)
        checks = [(not self.shard or (shard and int(shard[1]) < int(shard[2])), "--shard must be K/N, 0 <= K < N"),
                  (self.only in ("", *STAGES, "report", "pilot"), f"--only must be one of {STAGES + ['report', 'pilot']}"),
                  (self.design in ("frozen", "pixels"), "--design must be 'frozen' or 'pixels'"),
                  (self.solo_tasks >= 0 and self.vision_lr_scale > 0, "--solo-tasks >= 0, --vision-lr-scale > 0"),
                  (not (bad := [t for t in self.tasks if t not in RECIPES]), f"no recipe for {bad}; recipes: {list(RECIPES)}"),
                  (set(self.seeds) == set(VARIANTS) and min(self.seeds.values()) >= 1,
                   f"--seeds needs a count >= 1 for each of {VARIANTS}"),
                  (self.seeds["none"] >= max(self.seeds.values()), "--seeds: none needs the most seeds (the pairing)"),
                  (set(self.task_steps) <= set(RECIPES) and all(v > 0 for v in self.task_steps.values()),
                   "--task-steps: steps > 0 per recipe"),
                  (self.sweep_task in self.tasks, f"--sweep-task '{self.sweep_task}' must be one of --tasks"),
                  (min(self.episodes, self.workers) > 0 and min(self.demos, self.steps, self.budget_min) >= 0,
                   "--episodes and --workers must be > 0; --demos, --steps, --budget-min >= 0"),
                  (self.device in ("cpu", "cuda"), f"--device must be cpu or cuda, got '{self.device}'")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def weights(self) -> dict:
        w, k = self.stage_weight, self.keyframe_weight
        return {"none": (0.0, 0.0), "SS": (w, 0.0), "KS": (0.0, k), "SS+KS": (w, k)}


def parse_options(argv=None) -> Options:
    """Options from flags; the protocol's numbers default to those of --preset."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="cpu")
    preset = pre.parse_known_args(argv)[0].preset
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {list(PRESETS)}, got '{preset}'")
    defaults = {k: json.dumps(v) if k in JSON_OPTIONS else v for k, v in copy.deepcopy(PRESETS[preset]).items()}
    return data.parse_options(Options, argv, "ablation.py", __doc__.split("\n")[0], defaults)


# ----------------------------------------------------------------------------- the plan: one Job per run

@dataclass
class Job:
    name: str      # unique; OUT/runs/NAME.json records it
    stage: str     # data | train | eval
    script: str    # data.py | train.py | eval_sim.py | eval_real.py
    argv: list     # the script's arguments: the run is exactly `python SCRIPT ARGV`
    output: Path   # present when the run has finished
    needs: list = field(default_factory=list)  # the Jobs whose outputs this run reads

    @property
    def command(self) -> str:
        return "python " + shlex.join([self.script, *map(str, self.argv)])

    def config(self) -> list:
        """The command without the options that cannot change the result (a finished run stays done)."""
        a, skip = list(map(str, self.argv)), {"--workers", "--threads"}
        return [x for i, x in enumerate(a) if x not in skip and (i == 0 or a[i - 1] not in skip)]


def without(flags: tuple, *names) -> list:
    """A recipe's flags without the named options (and their values)."""
    out, skip = [], False
    for f in flags:
        if skip or f in names:
            skip = f in names
            continue
        out.append(f)
    return out


def train_flags(o: Options, flags: tuple) -> list:
    """A recipe's train.py flags for the design, without the loss weights (each run sets them)."""
    flags = without(flags, "--stage-weight", "--keyframe-weight")
    if o.design == "frozen":
        return flags
    # the paper's setting: the front end trains and its keypoint tokens enter the prefix; --symmetry and
    # --object-tokens need --grounded-only (the images are not transformed), so they go with it, as does
    # --positions (it replaces a frozen front end's cached output)
    switches = ("--freeze-vision", "--grounded-only", "--symmetry", "--object-tokens")
    return [f for f in without(flags, "--shift", "--positions") if f not in switches] + [
        "--shift", 4, "--state-in", "expert", "--vision-lr-scale", o.vision_lr_scale]


def run_name(variant: str, seed: int, w: tuple) -> str:
    return f"{variant}_s{seed}" if variant != "sweep" else f"sweep_ss{w[0]:g}_ks{w[1]:g}_s{seed}"


def plan(o: Options, out: Path, runs: Path, dat: Path) -> list:
    jobs = []
    for t in o.tasks:
        r = RECIPES[t]
        front = r.front_end if Path.cwd() == ROOT else ROOT / r.front_end  # relative: the records hold across clones
        demos = Job(f"data__{t}", "data", "data.py",
                    ["generate", "--task", t, "--out", dat / t, "--workers", o.workers, *r.demos,
                     *(["--episodes", o.demos] if o.demos else [])], dat / t / "meta.json")
        jobs.append(demos)
        solo = not o.solo_tasks or t in o.tasks[:o.solo_tasks]  # SS and KS alone
        steps = o.steps or o.task_steps.get(t, 0)
        points = [(v, s, o.weights()[v]) for s in range(o.seeds["none"]) for v in ("none", "SS+KS", "SS", "KS")
                  if s < o.seeds[v] and (solo or v in ("none", "SS+KS"))]
        points += [("sweep", 0, tuple(w)) for w in o.sweep if t == o.sweep_task]
        for variant, seed, (ws, wk) in points:
            name = run_name(variant, seed, (ws, wk))
            train = Job(f"train__{t}__{name}", "train", "train.py",
                        ["--data", dat / t, "--out", runs / t / name, "--vision-from", front, "--resume",
                         *train_flags(o, without(r.train, "--steps") if steps else r.train), "--stage-weight", ws,
                         "--keyframe-weight", wk, "--seed", seed, "--device", o.device,
                         *(["--steps", steps] if steps else [])], runs / t / name / "ckpt.pt", [demos])
            jobs += [train, eval_job(o, f"eval__{t}__{name}", train, t, out / "eval" / t / name, o.episodes)]
    return jobs


def eval_job(o: Options, name: str, train: Job, t: str, ev: Path, episodes: int) -> Job:
    """The recipe's evaluator on the first `episodes` held-out seeds (block 0)."""
    r = RECIPES[t]
    flags = without(r.evaluate, "--episodes", "--video") + ["--episodes", episodes, "--video", 0, "--seed", 0]
    flags += ["--workers", o.workers, "--device", o.device] if r.evaluator == "eval_sim" else ["--robot", "mujoco"]
    return Job(name, "eval", f"{r.evaluator}.py", ["--ckpt", train.output, "--task", t, "--out", ev, *flags],
               ev / "results.json", [train])


def pilot_plan(o: Options, out: Path, runs: Path, dat: Path) -> list:
    """The pilot's runs, task by task (a task's criteria come before the next task is paid for): the study's
    demonstrations and SS+KS seed 0 training, and an evaluation on pilot.EPISODES episodes (its own, OUT/pilot/)."""
    study = {j.name: j for j in plan(o, out, runs, dat)}
    jobs = []
    for t in o.tasks:
        train = study[f"train__{t}__SS+KS_s0"]
        jobs += [study[f"data__{t}"], train, eval_job(o, f"pilot_eval__{t}", train, t, out / "pilot" / t / "eval",
                                                      pilot.EPISODES)]
    return jobs


# ----------------------------------------------------------------------------- running

def is_done(job: Job, records: Path, jobs: list) -> bool:
    """Recorded with this command, and its output is there or no longer needed: a fresh clone holds the records
    and evaluations but not the git-ignored checkpoints and demonstrations, and redoes nothing whose every user
    (the runs among `jobs` that need it) is done."""
    rec = records / f"{job.name}.json"
    if not rec.is_file():
        return False
    was = json.loads(rec.read_text())
    if was["config"] != job.config():
        raise AblationError(f"{rec} was recorded for another command:\n  was: {was['command']}\n  now: {job.command}\n"
                            f"delete {rec} and {job.output.parent} to redo it with these options, or pass another "
                            f"--out and --runs-dir")
    if job.output.is_file():
        return True
    users = [j for j in jobs if any(n is job for n in j.needs)]
    return bool(users) and all(is_done(u, records, jobs) for u in users)


@contextlib.contextmanager
def stop_at(deadline: float):
    """Ctrl-C at `deadline` (time.time()): a training saves its checkpoint at the end of the step and stops
    (train.interruptible). Yields a function: has it fired? Main thread only (signals)."""
    fired = []

    def handler(sig, frame):
        fired.append(True)
        signal.raise_signal(signal.SIGINT)
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.time(), 1e-3))
    try:
        yield lambda: bool(fired)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def finished_training(ckpt: Path) -> bool:
    import torch
    ck = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else None
    return ck is not None and ck["step"] >= ck["options"]["steps"]


def run_job(job: Job, o: Options, records: Path, deadline: float = 0.0) -> dict | None:
    """Runs the job and records it; None where a training stopped at `deadline` unfinished (a piece: the next
    invocation's train.py --resume continues it)."""
    import importlib
    print(f"\n== {job.name}\n$ {job.command}", flush=True)
    t0 = time.time()
    pieces = job.stage == "train" and deadline
    with stop_at(max(deadline, t0 + MIN_PIECE_S)) if pieces else contextlib.nullcontext(lambda: False) as fired:
        try:
            code = importlib.import_module(job.script[:-3].replace("/", ".")).main([str(a) for a in job.argv])
        except SystemExit as e:
            code = e.code
    if fired() and not finished_training(job.output):
        print(f"{job.name}: stopped at the budget, after {time.time() - t0:.0f} s; the next invocation resumes it")
        return None
    if (code and not fired()) or not job.output.is_file():
        raise AblationError(f"{job.name} failed (exit {code}); command: {job.command}")
    result = {}
    if job.stage == "eval":
        res = json.loads(job.output.read_text())["tasks"]
        result = {t: {k: r[k] for k in ("successes", "episodes", "success_rate", "failure_types")} for t, r in res.items()}
    rec = dict(name=job.name, stage=job.stage, command=job.command, config=job.config(), git_revision=data.git_revision(),
               preset=o.preset, wall_s=round(time.time() - t0, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S"), result=result)
    records.mkdir(parents=True, exist_ok=True)
    data.atomic_write_bytes(records / f"{job.name}.json", lambda f: f.write(json.dumps(rec, indent=1, default=str).encode()))
    return rec


# ----------------------------------------------------------------------------- report

def report(o: Options, jobs: list, out: Path, records: Path) -> dict:
    """report.md, compare.md / .json and charts (diagnostics.compare), summary.json: of the evaluations done."""
    import stats
    from lab import diagnostics
    from lab.diagnostics import compare, probe
    none_outcomes = {}
    done = {j.name for j in jobs if j.stage == "eval" and is_done(j, records, jobs)}
    sections, per_task, missing = [], {}, [j.name for j in jobs if j.stage == "eval" and j.name not in done]
    for t in o.tasks:
        # seed s of a variant pairs with seed s of none (compare pairs folder i with folder i): per variant, the
        # leading seeds 0, 1, ... done for it and for none; a seed done after a gap waits for the gap
        lead = lambda v: next((s for s in range(o.seeds[v]) if f"eval__{t}__{v}_s{s}" not in done), o.seeds[v])
        dirs = {v: [out / "eval" / t / f"{v}_s{s}" for s in range(min(lead(v), lead("none")))] for v in VARIANTS}
        dirs = {v: d for v, d in dirs.items() if d}
        if "none" not in dirs or len(dirs) < 2:
            continue
        labels = list(dirs)
        md = compare([dirs[v] for v in labels], str(out / t), labels)
        cmp = json.loads((out / t / "compare.json").read_text())
        base = cmp["tasks"][t]["variants"]["none"]
        per_task[t] = dict(compare=cmp, seeds={v: len(d) for v, d in dirs.items()}, base_rate=base["seed_mean"])
        if 0 < base["seed_mean"] < 1 and len(dirs["none"]) > 1:  # the calibration needs both outcomes and 2 seeds
            none_outcomes[t] = diagnostics.seed_matrices(*([[json.loads((d / "results.json").read_text())
                                                            for d in dirs["none"]]] * 2), t)[0]
        sections += [f"## {t} ({cmp['tasks'][t]['gripper_events']} gripper events)", "", "{power:" + t + "}", "",
                     strip_bootstrap(md)]
    calib = stats.calibrate(none_outcomes, o.episodes) if none_outcomes else {}
    for t, p in per_task.items():  # the design actually used, under the simulation calibrated on the none arms
        p["power"] = power_of_design(o.episodes, p["base_rate"], sorted(set(p["seeds"][v] for v in p["seeds"] if v != "none")), calib)
        sections[sections.index("{power:" + t + "}")] = power_line(p["power"], calib)
    for t in [t for t in o.tasks if t == o.sweep_task]:
        cells = [(w, out / "eval" / t / run_name(v, 0, w)) for v, w in
                 [("none", (0.0, 0.0)), ("SS+KS", o.weights()["SS+KS"])] + [("sweep", tuple(w)) for w in o.sweep]]
        cells = [(w, d) for w, d in cells if (d / "results.json").is_file()]
        if len(cells) > 2:
            compare([d for _, d in cells], str(out / "sweep"), [f"ss{w[0]:g}_ks{w[1]:g}" for w, _ in cells])
            sections += [f"## Loss-weight sweep on {t} (training seed 0)", "",
                         (out / "sweep" / "compare.md").read_text()]
    if not per_task:  # an error only when the report was asked for: a first invocation may end before it
        if o.only == "report":
            raise AblationError("no task has none and another variant evaluated yet: run the protocol first")
        print("no report yet: no task has none and another variant evaluated", flush=True)
        return {}
    # StaKe: what the heads read along one rollout (lab/diagnostics.py probe; inference never uses them), on the
    # bimanual task with the most gripper events whose SS+KS seed 0 is evaluated; made once
    shown = [t for t in per_task if RECIPES[t].evaluator == "eval_sim" and f"eval__{t}__SS+KS_s0" in done]
    if shown:
        t = max(shown, key=lambda t: per_task[t]["compare"]["tasks"][t]["gripper_events"])
        png, ckpt = out / f"probe_{t}.png", next(j.output for j in jobs if j.name == f"train__{t}__SS+KS_s0")
        made = png.with_suffix(".json")  # written after the plot: a probe killed half-way is made again
        if not made.is_file() and ckpt.is_file():
            res = probe(str(ckpt), t, 0, str(png))
            cmd = f"python lab/diagnostics.py probe --ckpt {ckpt} --task {t} --seed 0 --out {png}"
            data.atomic_write_bytes(made, lambda f: f.write(json.dumps(
                dict(command=cmd, git_revision=data.git_revision()) | res, indent=1).encode()))
        if made.is_file():
            res = json.loads(made.read_text())
            sections += [f"## Stage probe: {t}, SS+KS seed 0, evaluation seed 0", "",
                         f"`{res['command']}`: success {res['success']}, stage head agrees with the rollout's own "
                         f"gripper stage at {res['stage_agreement']:.0%} of {res['steps']} steps, keyframe head's mean "
                         f"L1 error {res['keyframe_l1_mean']:.3f}.", "", f"![stage probe]({png.name})", ""]
    gains, headline = headline_gains(per_task, out, VARIANTS[1:])
    pooled = pooled_gains(gains)
    pooled_pw = {f"{S} seeds": stats.pooled_power([p["base_rate"] for p in per_task.values()], [S] * len(per_task),
                                                  0.14, o.episodes, calib["seed_sd"], ease_sd=calib["ease_sd"])
                 for S in sorted({g["seeds"] for g in gains})} if calib else {}
    cover_seeds = tuple(sorted(set(stats.COVERAGE_SEEDS) | {g["seeds"] for g in gains}))  # and the design's own
    coverage = stats.coverage_table("t", ease_sd=calib["ease_sd"], seeds=cover_seeds) if calib else {}
    head = [f"# StaKe ablation, preset `{o.preset}`", "",
            f"Git revision {data.git_revision()}. Every run's command: `{records}/*.json`. Seeds per variant: "
            + "; ".join(f"{t}: " + ", ".join(f"{v} {n}" for v, n in p["seeds"].items()) for t, p in per_task.items())
            + ". " + (f"**Not finished:** {len(missing)} evaluations ({', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''})."
                      if missing else "All runs finished."), ""]
    text = "\n".join(head + PRIMARY + headline + calibration_lines(calib, pooled_pw, coverage) + sections) + "\n"
    data.atomic_write_bytes(out / "report.md", lambda f: f.write(text.encode()))
    recs = [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]
    summary = dict(preset=o.preset, options=protocol(o), analysis=ANALYSIS, git_revision=data.git_revision(),
                   missing=missing, gains=gains, pooled=pooled, pooled_power_at_14pct=pooled_pw, calibration=calib,
                   coverage_primary=dict(command=f"stats.coverage_table('t', ease_sd={calib.get('ease_sd')}, seeds={cover_seeds})", studies=2000, base_rate=0.7, table=coverage),
                   tasks=per_task, wall_s_by_stage={s: round(sum(r["wall_s"] for r in recs if r["stage"] == s), 1) for s in STAGES},
                   runs={r["name"]: r["command"] for r in recs}, inputs=inputs(jobs, records))
    data.atomic_write_bytes(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=1, default=str).encode()))
    return summary


def inputs(jobs, records) -> dict:  # by content, not time: a fresh clone's files are as old as the clone
    return {j.name: hashlib.sha1(j.output.read_bytes()).hexdigest()[:12] for j in jobs
            if j.stage == "eval" and is_done(j, records, jobs)}


def protocol(o: Options) -> dict:
    """The options that shape the results (not which part this invocation runs); those added with the pixels
    design are left out at their frozen-design values, so the earlier protocol's report stays done."""
    return {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(o))).items()
            if k not in ("only", "dry_run", "budget_min", "workers", "shard") and not (k in FROZEN and v == FROZEN[k])}


# ----------------------------------------------------------------------------- main

def ablate(o: Options) -> dict:
    out = Path(o.out or f"results/ablation/{o.preset}")
    runs, dat = Path(o.runs_dir or f"runs/ablation/{o.preset}"), Path(o.data_dir or f"data/ablation/{o.preset}")
    records = out / "runs"
    jobs = pilot_plan(o, out, runs, dat) if o.only == "pilot" else plan(o, out, runs, dat)
    chosen = [j for j in jobs if o.only in ("", "pilot") or j.stage == o.only]
    if o.shard:  # this invocation's trainings and their evaluations; the demonstrations are made beforehand
        k, n = map(int, o.shard.split("/"))
        mine = set([j.name for j in jobs if j.stage == "train"][k::n])
        chosen = [j for j in chosen if j.name in mine or (j.stage == "eval" and j.needs[0].name in mine)]
    t0, ran, stopped = time.time(), [], False
    skipped = [j.name for j in chosen if is_done(j, records, jobs)]
    todo = [j for j in chosen if j.name not in skipped]
    if o.dry_run:
        print("\n".join(("done  " if is_done(j, records, jobs) else "todo  ") + j.command for j in chosen))
        todo = []
    elif any(j.stage != "data" for j in todo):
        import torch
        import train  # noqa: F401  torch and timm first: importing torchvision after a MuJoCo EGL context crashes
        if o.device == "cuda" and not torch.cuda.is_available():
            raise AblationError(f"--device cuda (preset {o.preset}) but torch sees no CUDA device: use --preset cpu")
    for job in todo:
        if ran and o.budget_min and time.time() - t0 > 60 * o.budget_min:  # at least one run per invocation
            stopped = True
            break
        if not all(is_done(n, records, jobs) for n in job.needs):
            raise AblationError(f"{job.name} needs {', '.join(n.name for n in job.needs)}: run "
                                f"`python lab/ablation.py --preset {o.preset}` " +
                                ("--only data first (a shard makes no demonstrations)" if o.shard else "without --only first"))
        if run_job(job, o, records, o.budget_min and t0 + 60 * o.budget_min) is None:
            stopped = True
            break
        ran.append(job.name)
    reported = False
    evals = [j for j in jobs if j.name.startswith("pilot_eval__")]
    if o.only == "pilot" and not o.dry_run and any(is_done(j, records, jobs) for j in evals):  # the tasks done so far
        was = (out / "pilot.json").read_text() if (out / "pilot.json").is_file() else ""
        res = pilot.report([j for j in evals if is_done(j, records, jobs)], out, o.device, dict(
            preset=o.preset, options=protocol(o), inputs=inputs(jobs, records),
            pending=[j.name.split("__")[1] for j in evals if not is_done(j, records, jobs)]))
        reported = (out / "pilot.json").read_text() != was
        skipped += [] if reported else ["pilot"]
        pilot.show(res)
    if o.only in ("", "report") and not o.dry_run:
        was = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        if (was.get("inputs") == inputs(jobs, records) and was.get("options") == protocol(o)
                and was.get("analysis") == ANALYSIS):  # a new analysis makes the report again
            skipped.append("report")
        elif inputs(jobs, records):
            reported = bool(report(o, jobs, out, records))
    progress = {s: f"{sum(is_done(j, records, jobs) for j in jobs if j.stage == s)}/{sum(j.stage == s for j in jobs)}" for s in STAGES}
    summary = dict(preset=o.preset, only=o.only or "all", ran=len(ran), skipped=len(skipped), reported=reported,
                   stopped_at_budget=stopped, progress=progress, wall_s=round(time.time() - t0, 1), out=str(out))
    if not ran and not reported and not stopped and not o.dry_run:
        print(f"everything selected is done: {len(skipped)} skipped, nothing run ({out})")
    print(json.dumps(summary))
    return summary


def main(argv=None) -> int:
    try:
        ablate(parse_options(argv))
    except (AblationError, ValueError, FileNotFoundError) as e:
        print(f"\nablation.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
