"""Named recipes: a task's whole pipeline under one name (openpi's named training configs).

    python lab/recipe.py lift_block                     # demonstrations -> shipped front end -> policy -> evaluation
    python lab/recipe.py franka_pick_place              # the Franka twin, evaluated through eval_real.py --robot mujoco
    python lab/recipe.py lift_block --train-front-end   # the front end from scratch too (lab/ground.py, about an hour)
    python lab/recipe.py --list                         # every recipe (one per task) and its commands

A recipe is a name for the settings of the scripts, not a second implementation: each stage calls one script's
`main()` with the flags below and prints that command, so every stage can be rerun by hand. Outputs go to --out,
by default the repository's runs/recipes/NAME (whatever the working directory; a run with --demos, --steps,
--episodes, --seed or --train-front-end gets its own folder, e.g. runs/recipes/lift_block-demos4-steps20):
data/, front_end/ (only with --train-front-end), policy/, eval_seedK/ (results.json, videos), report_seedK/.

Done means done with these settings: each finished stage leaves done.json with its command, its settings and the
digests of its inputs (the front end, the demonstrations' record, the checkpoint). A rerun skips a stage whose
record matches, resumes an unfinished one (data.py generate and train.py --resume continue where a kill left
them), and stops, naming the difference, where a stage was made with other settings or inputs: it never reports
a result made otherwise.

The front end (ground.py) is shipped in frontends/ with the commands that made it (frontends/TASK.json); those
of the other tasks start from lift_block's (bimanual scene; stack_three from stack_two's) or
franka_pick_place's (twin). Every policy trains with StaKe's stage and keyframe heads at weight 0.1 each
(train.py's defaults; the heads are dropped at inference).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""): sys.path[0] = str(Path(__file__).resolve().parents[1])   # python lab/recipe.py

import data  # noqa: E402
from data import opt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the repository: shipped front ends are relative to it


@dataclass(frozen=True)
class Recipe:
    task: str
    demos: tuple       # data.py generate: the demonstrations (50, seeds 0, 1, ...)
    front_end: str     # the shipped front end (ground.py export), relative to the repository
    ground: tuple      # ground.py stages that made it, in order; "{prev}" is the previous stage's checkpoint
    train: tuple       # train.py: the policy on the frozen front end's object positions
    evaluate: tuple    # the evaluator's flags
    evaluator: str     # "eval_sim" (bimanual scenes) or "eval_real" (the Franka twin, --robot mujoco)
    recovery: tuple = ()  # lab/dagger.py takeover flags, one entry per round (none: the policy of the demonstrations)


# why each piece is there, with the measurements: notebooks-2026-12-07:docs/experiments_recipe.md
POLICY = ("--preset", "small", "--stage-weight", "0.1", "--keyframe-weight", "0.1",
          "--freeze-vision", "--grounded", "--grounded-only", "--shift", "0", "--save-every", "500")
DEMOS = ("--episodes", "50", "--seed", "0", "--grasp-natural")
EVAL_SIM = ("--episodes", "100", "--noise-scale", "0", "--video", "4", "--batch", "25")
EVAL_TWIN = ("--episodes", "100", "--noise-scale", "0", "--video", "4")
# The flow sampled from full noise (pi0) rather than from its mean: where the policy places after a long carry,
# the mean's chunks stop short (handover: sticks set down 4-17 cm from the pad, on the placing arm's side).
# Same policies: handover 46 -> 61 and 41 -> 55 of 100, franka_put_in_bin 38 -> 54 of 100; no gain on
# place_block (12 -> 5), stack_two (6 -> 6) or franka_stack (13 -> 8) (notebooks-2026-12-07:docs/experiments_recipe.md)
EVAL_SIM_FULL_NOISE = ("--episodes", "100", "--noise-scale", "1", "--video", "4", "--batch", "25")
EVAL_TWIN_FULL_NOISE = ("--episodes", "100", "--noise-scale", "1", "--video", "4")


def from_front_end(shipped: str, steps: str, *extra) -> tuple:
    """The one ground.py stage of a task whose front end starts from another task's shipped one (same scene)."""
    return (("--init-from", shipped, "--layouts", "3000", "--steps", steps, "--expert-frac", "0.5", *extra),)


RECIPES = {
    "lift_block": Recipe(
        task="lift_block",
        demos=DEMOS,
        front_end="frontends/lift_block.pt",
        ground=(("--layouts", "6000", "--steps", "1000"),
                ("--layouts", "6000", "--steps", "2000", "--expert-frac", "0.5", "--init-from", "{prev}")),
        train=POLICY + ("--steps", "3000", "--symmetry", "--velocity"),
        evaluate=EVAL_SIM,
        evaluator="eval_sim"),
    "franka_pick_place": Recipe(
        task="franka_pick_place",
        demos=DEMOS,
        front_end="frontends/franka_pick_place.pt",
        ground=(("--layouts", "6000", "--steps", "2000"),
                ("--layouts", "6000", "--steps", "1200", "--expert-frac", "0.5", "--init-from", "{prev}")),
        # no --velocity: the client slows the arm, so the measured joint change is unlike the demonstrations'
        train=POLICY + ("--steps", "6000", "--symmetry"),
        evaluate=EVAL_TWIN,
        evaluator="eval_real"),
    # The other tasks' front ends start from a shipped one of the same scene (ground.py --init-from another task:
    # its weights, a new head and tokenizer), grounded with the arms in view from the start.
    "franka_put_in_bin": Recipe(
        task="franka_put_in_bin",
        demos=DEMOS,
        front_end="frontends/franka_put_in_bin.pt",
        # 600 steps: block 1.96 cm and 24/100 (notebooks-2026-12-07:docs/experiments_recipe.md)
        ground=from_front_end("frontends/franka_pick_place.pt", "1500"),
        train=POLICY + ("--steps", "6000", "--symmetry"),
        evaluate=EVAL_TWIN_FULL_NOISE,
        evaluator="eval_real"),
    "franka_stack": Recipe(
        task="franka_stack",
        demos=DEMOS,
        front_end="frontends/franka_stack.pt",  # --word-order: the instruction names base and top by order
        # without it, 600 steps left both blocks at 9.1 / 7.4 cm (chance 13.8 / 13.4); with it 3.4 / 3.5 cm
        # then 800 steps on the natural-grasp expert's frames, the whole rollout: the base block at 5.1 -> 4.0 cm
        # while the top one is grasped, 1.9-2.4 -> 1.2-1.5 at the place (ground.py check on the demonstrations)
        # then 2000 steps on 4000 layouts of those frames: held-out 1.36 / 1.35 -> 0.88 / 0.88 cm; then 3000 steps on
        # 6000 (its last step 1.00 / 1.14: a constant rate) and 800 with the rate annealed (--decay): 0.49 / 0.55 cm
        ground=from_front_end("frontends/franka_pick_place.pt", "1500", "--word-order") +
        (("--init-from", "{prev}", "--layouts", "2000", "--steps", "800", "--expert-frac", "0.75", "--grasp-natural",
          "--word-order"),
         ("--init-from", "{prev}", "--layouts", "4000", "--steps", "2000", "--expert-frac", "0.75", "--grasp-natural",
          "--word-order"),
         ("--init-from", "{prev}", "--layouts", "6000", "--steps", "3000", "--expert-frac", "0.75", "--grasp-natural",
          "--word-order"),
         ("--init-from", "{prev}", "--layouts", "6000", "--steps", "800", "--decay", "800", "--expert-frac", "0.75",
          "--grasp-natural", "--word-order")),
        # --positions simulator: 20/100 against 20 on the earlier front end; with the 0.88 cm one 20 -> 43/100 on the
        # same episodes (McNemar p 0.0008), with this one 43 -> 61/100 (p 0.013; docs/findings.md)
        train=POLICY + ("--steps", "6000", "--symmetry", "--positions", "simulator"),
        evaluate=EVAL_TWIN,
        evaluator="eval_real"),
    "lift_bar": Recipe(
        task="lift_bar",
        demos=DEMOS,
        front_end="frontends/lift_bar.pt",  # the bar by two points, its centre and one end (world.located)
        ground=from_front_end("frontends/lift_block.pt", "800"),
        train=POLICY + ("--steps", "3000", "--symmetry", "--velocity"),
        evaluate=EVAL_SIM,
        evaluator="eval_sim"),
    "place_block": Recipe(
        task="place_block",
        demos=DEMOS,
        front_end="frontends/place_block.pt",
        # then three stages on the natural-grasp expert's frames, the whole rollout: held-out 2.27 / 1.82 cm, then
        # 2.14 / 1.71 and 26 -> 36/100, then 1.57 / 1.42 and 36 -> 53/100 (87/200), then 1.01 / 1.11 and 104/200
        # (docs/findings.md); each stage on more layouts; then 800 steps with the rate annealed (--decay): 0.81 / 0.85 cm
        # and 104 -> 111/200 on the same seeds (p 0.36)
        ground=from_front_end("frontends/lift_block.pt", "1600") +
        (("--init-from", "{prev}", "--layouts", "2000", "--steps", "500", "--expert-frac", "0.75", "--grasp-natural"),
         ("--init-from", "{prev}", "--layouts", "4000", "--steps", "1000", "--expert-frac", "0.75", "--grasp-natural"),
         ("--init-from", "{prev}", "--layouts", "6000", "--steps", "2000", "--expert-frac", "0.75", "--grasp-natural"),
         ("--init-from", "{prev}", "--layouts", "6000", "--steps", "800", "--decay", "800", "--expert-frac", "0.75",
          "--grasp-natural")),
        # --object-distances: block on the pad or not; re-grasping rollouts 90 -> 67 of 100, success 6 -> 12
        # --positions simulator (the demonstrations' objects where the simulator has them, not where the front end
        # sees them, 2-6 cm off): 12 -> 26/100 on the same seeds (McNemar p 0.024; docs/findings.md)
        train=POLICY + ("--steps", "6000", "--symmetry", "--velocity", "--object-distances", "--positions", "simulator"),
        evaluate=EVAL_SIM,
        evaluator="eval_sim"),
    "stack_two": Recipe(
        task="stack_two",
        demos=DEMOS,
        front_end="frontends/stack_two.pt",  # --word-order: the instruction names base and top by order
        # 1200 steps: blocks at 2.5 / 3.17 cm and 3/100; then 500 steps on the reach's frames (notebooks-2026-12-07:docs/experiments_recipe.md)
        # then 2000 steps on 4000 layouts of the natural-grasp expert's whole rollout: held-out 2.35 / 2.53 / 1.05 ->
        # 0.97 / 1.27 / 0.50 cm (blocks, pad); 800 steps on 2000 layouts had left success at 7/100
        # (notebooks-2026-12-07:docs/experiments_recipe.md)
        ground=from_front_end("frontends/lift_block.pt", "2000", "--word-order") +
        (("--init-from", "{prev}", "--layouts", "2000", "--steps", "500", "--expert-frac", "0.75", "--expert-steps", "30",
          "--grasp-natural", "--word-order"),
         ("--init-from", "{prev}", "--layouts", "4000", "--steps", "2000", "--expert-frac", "0.75", "--grasp-natural",
          "--word-order"),
         # then 800 steps on 6000 layouts, the rate down in a line (--decay): 0.97 / 1.27 / 0.50 -> 0.71 / 1.02 / 0.28
         # cm; the 12000-step policy had reached 43/100 with its front end's positions, 60 with the simulator's
         ("--init-from", "{prev}", "--layouts", "6000", "--steps", "800", "--decay", "800", "--expert-frac", "0.75",
          "--grasp-natural", "--word-order")),
        # --object-tokens: its two reaches start from one home pose; a policy reading all blocks through one
        # linear map blends them (first grasps within 2 cm: 15 of 100 -> 40)
        # --positions simulator: 13/100 against 11 on the earlier front end (p 0.82); with this one 7 -> 26/100, and
        # then 12000 steps 26 -> 43/100 on the same seeds (p 0.0095; 100 demonstrations at 6000: 13); on the
        # annealed front end 81 -> 86/200 (p 0.62; a recovery round: 72), and there 24000 steps 86 -> 132/200 on the
        # same seeds (p 7e-9; docs/findings.md)
        train=POLICY + ("--steps", "24000", "--symmetry", "--velocity", "--object-tokens", "--positions", "simulator"),
        evaluate=EVAL_SIM,
        evaluator="eval_sim"),
    "stack_three": Recipe(
        task="stack_three",
        demos=DEMOS,
        front_end="frontends/stack_three.pt",  # made from stack_two's as at 7edf837, before its last two stages
        # then 1500 steps on the natural-grasp expert's frames, the whole rollout: blocks 2.8-3.2 -> 1.6-1.8 cm
        # held-out, 5.0-6.7 -> 3.4-4.2 during the first reach (ground.py check on the demonstrations)
        ground=from_front_end("frontends/stack_two.pt", "1000", "--word-order") +
        (("--init-from", "{prev}", "--layouts", "2000", "--steps", "1500", "--expert-frac", "0.75", "--grasp-natural",
          "--word-order"),
         # then 2000 steps on 6000 layouts, the rate down in a line over the last 800 (--decay): held-out 1.59 / 1.80 /
         # 1.74 / 0.50 -> 0.79 / 1.13 / 1.12 / 0.25 cm; the policy had reached 8/100 with the old, 37 with the
         # simulator's positions, and on this one 23/100 on the same seeds (McNemar p 0.0026; docs/findings.md)
         ("--init-from", "{prev}", "--layouts", "6000", "--steps", "2000", "--decay", "800", "--expert-frac", "0.75",
          "--grasp-natural", "--word-order")),
        # --object-tokens, as stack_two: with this front end first closes within 2 cm 12 -> 31 of 100, 33 in the
        # recipe's record (without it 6; notebooks-2026-12-07:docs/experiments_recipe.md)
        # --positions simulator: 1/100 against 1, not kept; with 12000 steps, as stack_two, 1 -> 8/100 on the same
        # seeds (McNemar p 0.039); on the annealed front end 24000 steps 23 -> 35/100 (p 0.043; docs/findings.md)
        train=POLICY + ("--steps", "24000", "--symmetry", "--velocity", "--object-tokens", "--positions", "simulator"),
        evaluate=EVAL_SIM,
        evaluator="eval_sim"),
    "handover": Recipe(
        task="handover",
        demos=DEMOS,
        front_end="frontends/handover.pt",  # the pad, and the stick by two points
        # then 1200 steps on frames of the demonstrations' own expert (natural grasp), the whole rollout: on the
        # demonstrations the pad was at 3.1-3.3 cm during the place, 1.7-1.8 after (notebooks-2026-12-07:docs/experiments_recipe.md)
        ground=from_front_end("frontends/lift_block.pt", "800") +
        (("--init-from", "{prev}", "--layouts", "2000", "--steps", "1200", "--expert-frac", "0.75", "--grasp-natural"),),
        # no --symmetry: the right arm always picks and the left always places
        train=POLICY + ("--steps", "6000", "--velocity"),
        evaluate=EVAL_SIM_FULL_NOISE,
        evaluator="eval_sim"),
}
# Recovery rounds (docs/recovery.md): the recipe, then rounds where the closed-loop expert takes over the last policy's
# rollouts on the same 50 layouts, the free objects shoved 2-5 cm at the takeover (new reach targets), and the policy
# trains again on everything; 200 evaluation episodes, the bar
RECOVERY = tuple(("--takeovers", "4", "--perturb", "shove", "--seed", str(r)) for r in (1, 2))
RECIPES["place_block_recovery"] = dataclasses.replace(
    RECIPES["place_block"], recovery=RECOVERY, evaluate=("--episodes", "200", *EVAL_SIM[2:]))
# lift_block in the user's own words: its front end grounded one stage more and its policy trained on world/words.py's
# grammar (156 ways of asking, the templates among them); the held-out sentences: README, results/phrasings
_lift = RECIPES["lift_block"]
RECIPES["lift_block_words"] = dataclasses.replace(
    _lift, front_end="frontends/lift_block_words.pt", train=_lift.train + ("--phrasings", "grammar"),
    ground=_lift.ground + (("--layouts", "6000", "--steps", "1000", "--expert-frac", "0.5", "--phrasings", "grammar",
                            "--init-from", "{prev}"),))


@dataclass
class Options:
    name: str = opt("lift_block", f"the recipe: {', '.join(RECIPES)}")
    out: str = opt("", "output folder (default: the repository's runs/recipes/NAME, plus the settings that differ "
                   "from the recipe's, e.g. runs/recipes/lift_block-steps100)")
    train_front_end: bool = opt(False, "train the front end with ground.py instead of loading the shipped one")
    seed: int = opt(0, "training seed of the policy")
    eval_seed: int = opt(0, "evaluation seed block")
    demos: int = opt(0, "demonstrations (0: the recipe's; fewer only for a quick check)")
    steps: int = opt(0, "training steps (0: the recipe's)")
    episodes: int = opt(0, "evaluation episodes (0: the recipe's)")
    workers: int = opt(2, "processes for recording demonstrations, rendering layouts and evaluating")
    instruction: str = opt("", "evaluate in your own words ({color} etc. filled from each layout, see eval_sim.py "
                           "--instruction) into eval_seedK-YOUR-WORDS/")
    list: bool = opt(False, "print the recipes and their commands, run nothing")

    def __post_init__(self):
        if self.name not in RECIPES:
            raise ValueError(f"unknown recipe '{self.name}'; recipes: {', '.join(RECIPES)}")
        if min(self.demos, self.episodes, self.steps, self.workers - 1) < 0:
            raise ValueError("--demos, --episodes and --steps must be >= 0, --workers >= 1")


def out_folder(o: Options) -> Path:
    """--out, or the repository's runs/recipes/NAME; settings other than the recipe's name the folder, so a quick
    check never lands where the recipe's own result is."""
    if o.out:
        return Path(o.out)
    tags = [f"{k}{v}" for k, v in (("demos", o.demos), ("steps", o.steps), ("episodes", o.episodes), ("seed", o.seed)) if v]
    return ROOT / "runs" / "recipes" / "-".join([o.name, *tags, *(["own-front-end"] if o.train_front_end else [])])


def shown(path) -> Path:
    """A path as the printed commands give it: relative to the working directory where it lies below it."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()) if path.is_absolute() else path
    except ValueError:
        return path


def commands(o: Options) -> list:
    """(stage, script, argv, folder that holds its done.json) for every stage of the recipe, in order."""
    r, out = RECIPES[o.name], shown(out_folder(o))
    words = "-" + re.sub(r"[^a-z0-9]+", "-", o.instruction.lower()).strip("-")[:48] if o.instruction else ""
    demos, policy, ev = out / "data", out / "policy", out / f"eval_seed{o.eval_seed}{words}"
    cmds = [("demonstrations", "data.py", ["generate", "--task", r.task, "--out", demos, "--workers", o.workers, *r.demos,
                                           *(["--episodes", o.demos] if o.demos else [])], demos)]
    here = lambda path: shown(ROOT / path)  # a shipped file, from any directory
    front = here(r.front_end)
    if o.train_front_end:
        prev = None
        for i, flags in enumerate(r.ground):
            run = out / "front_end" / f"stage{i}"
            argv = ["--task", r.task, "--out", run, "--workers", o.workers, "--resume",
                    *[str(prev) if f == "{prev}" else here(f) if f.startswith("frontends/") else f for f in flags]]
            cmds.append((f"front end, stage {i}", "lab/ground.py", argv, run))
            prev = run / "ckpt.pt"
        front = prev
    settings = ["--vision-from", front, "--resume", *r.train, "--seed", o.seed] + (["--steps", o.steps] if o.steps else [])
    cmds.append(("policy", "train.py", ["--data", demos, "--out", policy, *settings], policy))
    folders = [demos]  # recovery rounds: the expert takes over the last policy's rollouts; train again on all
    for i, flags in enumerate(r.recovery, 1):
        rd = out / f"round{i}"
        cmds.append((f"takeovers, round {i}", "lab/dagger.py", ["takeover", "--ckpt", policy / "ckpt.pt", "--data", demos,
                                                               "--out", rd / "data", *flags], rd / "data"))
        folders.append(rd / "data")
        policy = rd / "policy"
        cmds.append((f"policy, round {i}", "train.py", ["--data", *folders, "--out", policy, *settings], policy))
    evaluate = ["--ckpt", policy / "ckpt.pt", "--task", r.task, "--out", ev, *r.evaluate, "--seed", o.eval_seed]
    evaluate += ["--workers", o.workers] if r.evaluator == "eval_sim" else ["--robot", "mujoco"]
    evaluate += ["--episodes", o.episodes] if o.episodes else []
    evaluate += ["--instruction", o.instruction] if o.instruction else []
    cmds.append(("evaluation", f"{r.evaluator}.py", evaluate, ev))
    return [(stage, script, [str(a) for a in argv], done) for stage, script, argv, done in cmds]


# ----------------------------------------------------------------------------- done means done with these settings

def digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


PATH_FLAGS = ("--out", "--data", "--vision-from", "--init-from", "--ckpt")


def settings(argv: list, out: Path) -> dict:
    """A stage's flags as {flag: value}, without the ones that change no output (--workers), paths written as
    `<out>/...` inside the run's folder and `<repo>/...` inside the repository, so the record does not depend on
    the working directory."""
    def canonical(a):
        p = Path(a).resolve()
        for base, name in ((out.resolve(), "<out>"), (ROOT, "<repo>")):
            if p.is_relative_to(base):
                return f"{name}/{p.relative_to(base)}"
        return str(p)
    flags, key = {}, None
    for a in argv:
        if a.startswith("--"):
            key = a
            flags[key] = []
        elif key is None:
            flags.setdefault("", []).append(a)  # the subcommand (data.py generate)
        else:
            flags[key].append(canonical(a) if key in PATH_FLAGS else a)
    flags.pop("--workers", None)
    return {k: " ".join(v) for k, v in flags.items()}


def stage_inputs(argv: list) -> dict:
    """What a stage reads that its flags do not say: the digests of the front end it starts from, the record of
    the demonstrations it trains on, the checkpoint it evaluates."""
    flag = {"--vision-from": "front end", "--init-from": "front end", "--ckpt": "checkpoint"}
    found = {name: digest(argv[i + 1]) for i, a in enumerate(argv[:-1]) if (name := flag.get(a))
             and Path(argv[i + 1]).is_file()}
    rest = argv[argv.index("--data") + 1:] if "--data" in argv else []
    folders = rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]
    for k, folder in enumerate(folders):  # each folder's record (recovery rounds train on several)
        if (rec := Path(folder) / "done.json").is_file():
            made = json.loads(rec.read_text())  # what made them, not when
            blob = json.dumps([made.get("settings"), made.get("inputs")], sort_keys=True).encode()
            found["demonstrations" + (f" {k + 1}" if k else "")] = hashlib.sha256(blob).hexdigest()[:16]
    return found


def differences(was: dict, now: dict) -> str:
    """The settings and inputs that differ, as the user would type them."""
    if "settings" not in was:
        return "made by an earlier version of recipe.py, which did not record its settings"
    rows = [f"{k or 'arguments'} {was['settings'].get(k, '(none)')!r} (now {now['settings'].get(k, '(none)')!r})"
            for k in sorted(set(was["settings"]) | set(now["settings"])) if was["settings"].get(k) != now["settings"].get(k)]
    rows += [f"its {k} changed since" for k in sorted(set(was["inputs"]) | set(now["inputs"]))
             if was["inputs"].get(k) != now["inputs"].get(k)]
    return "; ".join(rows)


def run_script(script: str, argv: list) -> int:
    """One stage: the script's main() in this process (lab/ground.py is lab.ground)."""
    import importlib
    return importlib.import_module(script[:-3].replace("/", ".")).main(argv)


def run(o: Options) -> dict:
    # torch and timm before any stage renders: importing them after a MuJoCo EGL context exists segfaults the
    # process (with --workers 1 the demonstrations render in this process, and the policy stage follows)
    import timm  # noqa: F401
    import torch  # noqa: F401
    t_start, walls = time.time(), {}
    cmds, out = commands(o), shown(out_folder(o))
    front = ROOT / RECIPES[o.name].front_end
    if not o.train_front_end and not front.is_file():
        raise FileNotFoundError(f"{front}: the shipped front end is missing (--train-front-end trains one)")
    for stage, script, argv, folder in cmds:
        print(f"\n== {stage}\n$ python {script} {shlex.join(argv)}", flush=True)
        record = {"command": f"python {script} {shlex.join(argv)}", "settings": settings(argv, out),
                  "inputs": stage_inputs(argv)}
        if (folder / "done.json").is_file():
            was = json.loads((folder / "done.json").read_text())
            if diff := differences(was, record):
                raise StaleStage(f"{folder} was made with other settings: {diff}. Rerun with the settings it was "
                                 f"made with, give another --out, or delete {folder} to redo it and what follows")
            if not (damaged := [name for name, d in was.get("outputs", {}).items()
                                if not (folder / name).is_file() or digest(folder / name) != d]):
                print(f"done already with these settings ({folder / 'done.json'})")
                walls[stage] = was.get("wall_s", 0.0)
                continue
            print(f"{', '.join(damaged)}: missing or changed since the stage finished; running it again to repair")
        t0 = time.time()
        code = run_script(script, argv)
        if code == 130:  # Ctrl-C: the script said so in one line
            raise StageInterrupted
        if code:
            raise RuntimeError(f"{stage} failed (exit {code}): python {script} {shlex.join(argv)}")
        walls[stage] = round(time.time() - t0, 1)
        if script == "data.py":  # the episodes, so that a rerun notices one missing or corrupt (data.py repairs it)
            record["outputs"] = {p.name: digest(p) for p in sorted(folder.glob("episode_*.npz"))}
        data.atomic_write_bytes(folder / "done.json", lambda f: f.write(json.dumps(
            record | {"wall_s": walls[stage], "git": data.git_revision()}, indent=1).encode()))
    from lab.diagnostics import compare
    ev = cmds[-1][3]
    report = ev.parent / ev.name.replace("eval_", "report_", 1)
    print(compare([str(ev)], str(report)))
    videos = sorted(ev.rglob("*.mp4"), key=lambda p: ("ok" not in p.name, p.name))  # a success first
    res = json.loads((ev / "results.json").read_text())["tasks"][RECIPES[o.name].task]
    policy = Path(cmds[-1][2][cmds[-1][2].index("--ckpt") + 1]).parent  # the last round's
    charts = [p for p in (policy / "loss.png", report / "success.png")
              if p.is_file()]
    summary = {"recipe": o.name, "success_rate": res["success_rate"], "wilson95": res["wilson95"],
               "episodes": res["episodes"], "wall_s": walls, "total_wall_s": round(sum(walls.values()), 1),
               "video": str(videos[0]) if videos else None, "charts": [str(p) for p in charts]}
    print(f"{o.name}: success {res['successes']}/{res['episodes']} = {res['success_rate']:.2f} "
          f"[{res['wilson95'][0]:.2f}, {res['wilson95'][1]:.2f}]; wall time {summary['total_wall_s'] / 60:.1f} min "
          f"({', '.join(f'{k} {v / 60:.1f}' for k, v in walls.items())}"
          f"{'; as recorded when each stage ran' if time.time() - t_start < summary['total_wall_s'] else ''})")
    print(f"outputs in {out}: charts {', '.join(map(str, charts)) or 'none'}; video {summary['video']}")
    return summary


class StaleStage(RuntimeError):
    """A stage's output was made with other settings or inputs than this run's."""


class StageInterrupted(Exception):
    """Ctrl-C in a stage, which has printed what to do."""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and not argv[0].startswith("-"):  # the recipe's name first: python lab/recipe.py lift_block ...
        argv = ["--name", argv[0], *argv[1:]]
    try:
        o = data.parse_options(Options, argv, "lab/recipe.py [NAME]", __doc__.split("\n")[0] + " NAME is --name.")
        if o.list:
            for name in RECIPES:
                print(f"{name}:")
                for stage, script, a, _ in commands(Options(name=name)):
                    print(f"  {stage}: python {script} {shlex.join(a)}")
            return 0
        run(o)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"recipe.py: error: {e}", file=sys.stderr)
        return 2
    except StageInterrupted:
        return 130
    except KeyboardInterrupt:
        print("\nrecipe.py: interrupted; rerun the same command to resume (finished stages are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
