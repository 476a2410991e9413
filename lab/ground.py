"""Grounding pretraining: teach the policy's vision-language front end where the instruction's objects are.

    python lab/ground.py --task lift_block --out runs/ground_lift --layouts 6000 --steps 1000
    python lab/ground.py --task lift_block --out runs/ground_arms --steps 2000 --expert-frac 0.5 --workers 2 --init-from runs/ground_lift/ckpt.pt
    python train.py --data data/lift_block --out runs/lift_grounded --vision-from runs/ground_arms/ckpt.pt --freeze-vision ...
    python lab/ground.py check --ckpt runs/ground_arms/ckpt.pt --data data/lift_block [--out X.json]  # on demo frames
    python lab/ground.py export --ckpt runs/ground_arms/ckpt.pt --out frontends/lift_block.pt   # fp16, to ship

Why. pi0 fine-tunes a VLA whose vision-language backbone was pretrained on web data (PaliGemma, whose mix
includes detection and referring expressions: "where is the red block"). Our VLA starts from scratch, and from
50 demonstrations it does not learn where the named block is (notebooks-2026-12-07:docs/experiments.md: 50 layouts are memorised,
and the policy's own loss does not pull its readout toward the block). This script is the miniature of that
pretraining stage: no demonstrations and no actions, only rendered scenes of random layouts (seeds from
GROUND_SEED_OFFSET on, disjoint from demonstration and evaluation seeds) and the simulator's own object
positions as labels. It trains exactly the modules the policy uses to see (the ViT, the spatial-softmax
keypoint detectors with their language shift, the word embeddings; `VLA.encode_keypoints`) plus a linear head
from all cameras' keypoint coordinates to the (x, y) on the table of every object the instruction names
(`layout.roles`, e.g. the block to lift; a rod or the bar by two points, `world.located`). train.py --vision-from loads the rest and the tokenizer (with
--grounded the head too, as model.ground_head), and --freeze-vision keeps them fixed while the policy learns to
act on them.

Deviation (documented in README): the labels are privileged simulator state. On a real arm one would ground
on twin renders (or on annotated images); the twin's tasks work here as they do for the bimanual scene.
With --expert-frac 0 layouts render with the arms at home; a fraction > 0 renders frames from inside the
scripted expert's rollout, so the keypoints also learn to find the objects with an arm over them.

Writes OUT/ckpt.pt (atomic; --resume continues it) and OUT/ground.json (held-out error per evaluation, the
mean predictor's error beside it, command and git revision). Seeded: the same flags give the same numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""): sys.path[0] = str(Path(__file__).resolve().parents[1])   # python lab/ground.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import data  # noqa: E402
import world  # noqa: E402
from world import words  # noqa: E402
from data import git_revision, opt  # noqa: E402
from model import PRESETS, VISION_PREFIXES, VLA, ModelConfig, Tokenizer, images_to_input, train_tokenizer  # noqa: E402
from dataset import random_shift  # noqa: E402
from train import cpu_threads, load_checkpoint, save_checkpoint  # noqa: E402

GROUND_SEED_OFFSET = 50_000_000  # above every demonstration (< sim.EVAL_SEED_OFFSET) and evaluation seed in use
HOLDOUT_SEED_OFFSET = 60_000_000


@dataclass
class Options:
    task: str = opt("lift_block", "the task whose layouts are rendered (any task of sim.py or twin.py)")
    out: str = opt("runs/ground", "run folder: ckpt.pt, ground.json")
    layouts: int = opt(6000, "training layouts (one rendered frame per layout, every camera)")
    holdout: int = opt(300, "held-out layouts for the error curve")
    steps: int = opt(1500, "optimiser steps")
    batch_size: int = opt(64, "layouts per step")
    lr: float = opt(5e-4, "peak learning rate (linear warm-up over --warmup steps, then constant, then --decay)")
    warmup: int = opt(100, "linear warm-up steps")
    decay: int = opt(0, "the last this many steps take the rate down in a line towards 0 (0: constant to the end, "
                     "where the last step's weights are one noisy draw)")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    shift: int = opt(4, "random-shift augmentation in pixels, as train.py --shift")
    preset: str = opt("small", f"model size: {', '.join(PRESETS)} (the policy must use the same)")
    keypoints: int = opt(16, "keypoints per camera (model.ModelConfig.keypoints)")
    word_order: bool = opt(False, "the keypoints read the instruction through one attention layer, so word order "
                           "counts (model.ModelConfig.kp_word_order): the stacking tasks name roles by order")
    cameras: list = opt([], "cameras (default: all of the task's; the policy may use any subset)")
    image_size: list = opt([96, 96], "rendered image size H W (must equal the demonstrations')")
    expert_frac: float = opt(0.0, "fraction of layouts rendered at a random step of the scripted expert's rollout "
                             "(arms in view, objects moved) instead of at reset with the arms at home")
    expert_steps: int = opt(0, "--expert-frac frames from the expert's first this many steps (0: the task's "
                                "max_steps): the reach to the first grasp, where a policy needs its objects most")
    grasp_natural: bool = opt(False, "the expert of --expert-frac frames grasps as data.py generate --grasp-natural")
    workers: int = opt(1, "processes that render (each renders every workers-th layout)")
    init_from: str = opt("", "start from this ground.py checkpoint or shipped front end: of the same task, its "
                         "weights, head and tokenizer (a curriculum: ground at reset first, then with --expert-frac "
                         "> 0); of another task of the same scene, its weights only (a new head and tokenizer; "
                         "words both tokenizers know keep their embeddings). Same --preset, --keypoints")
    phrasings: str = opt("templates", "the instruction of each layout: 'templates', the task's own phrasings; "
                         "'grammar', one of world.words' many ways of asking for the same objects")
    seed: int = opt(0, "seeds weights, batch order and augmentation (layout seeds are fixed by the offset)")
    eval_every: int = opt(100, "steps between held-out evaluations (and checkpoints)")
    threads: int = opt(0, "CPU threads for torch (0: half the cores, train.cpu_threads)")
    resume: bool = opt(False, "continue OUT/ckpt.pt if it exists (same options, --steps may grow)")

    def __post_init__(self):
        checks = [(self.layouts > 0 and self.holdout > 0, "--layouts and --holdout must be > 0"),
                  (self.steps > 0 and self.batch_size > 0, "--steps and --batch-size must be > 0"),
                  (self.preset in PRESETS, f"--preset must be one of {list(PRESETS)}"),
                  (self.keypoints > 0, "--keypoints must be > 0 (grounding trains the keypoint detectors)"),
                  (len(self.image_size) == 2, "--image-size takes two numbers, H W"),
                  (0 <= self.expert_frac <= 1 and self.workers >= 1, "--expert-frac in [0, 1], --workers >= 1"),
                  (self.eval_every > 0 and self.warmup >= 0 and self.shift >= 0, "bad --eval-every/--warmup/--shift"),
                  (0 <= self.decay <= self.steps, f"--decay must be in [0, --steps]; got {self.decay}"),
                  (self.phrasings in ("templates", "grammar"), "--phrasings must be 'templates' or 'grammar'")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        world.suite_of(self.task)  # a clear error naming the known tasks


def render(task: str, seeds, cameras, image_size, expert_frac: float = 0.0, expert_steps: int = 0,
           grasp_natural: bool = False) -> tuple:
    """(images (N, C, H, W, 3) uint8, targets (N, 2R) metres, instructions, role names) of the seeds' layouts.

    A fraction `expert_frac` of the layouts (chosen by each seed) is rendered at a random step of the scripted
    expert's rollout instead of at reset: arms over the table, held objects moved (targets are the objects'
    positions at that step), as the policy will see them: a step below `expert_steps` (0: the task's max_steps),
    of an expert grasping as `data.py generate --grasp-natural` does when `grasp_natural`."""
    from world import experts
    env = world.make_env(task, cameras=tuple(cameras), image_size=tuple(image_size))
    images, targets, texts, roles = [], [], [], None
    for s in seeds:
        obs = env.reset(s)
        rng = np.random.default_rng(s)
        if rng.random() < expert_frac:
            k = int(rng.integers(1, expert_steps or env.task.max_steps))
            x = experts.make_expert(env)
            x.GRASP_YAW = not grasp_natural
            for t, action in enumerate(x.actions()):
                if t >= k:
                    break
                env.apply(action)  # physics only; one render below
            obs = env.observe()
        roles, xy = world.located(env)
        images.append(np.stack([obs["images"][c] for c in cameras]))
        targets.append(xy)
        texts.append(obs["instruction"])
    return torch.from_numpy(np.stack(images)), torch.tensor(np.array(targets), dtype=torch.float32), texts, roles


def render_parallel(task, seeds, cameras, image_size, expert_frac, workers, expert_steps=0, grasp_natural=False) -> tuple:
    """render() split over `workers` processes (each with its own renderer); same result as one process."""
    seeds = list(seeds)
    if workers <= 1:
        return render(task, seeds, cameras, image_size, expert_frac, expert_steps, grasp_natural)
    chunks = [seeds[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers, initializer=data.quiet_worker) as pool:
        parts = pool.starmap(render, [(task, c, cameras, image_size, expert_frac, expert_steps, grasp_natural)
                                      for c in chunks])
    order = np.argsort(np.concatenate([np.arange(i, len(seeds), workers) for i in range(workers)]))
    images, targets = torch.cat([p[0] for p in parts])[order], torch.cat([p[1] for p in parts])[order]
    texts = [t for p in parts for t in p[2]]
    return images, targets, [texts[i] for i in order], parts[0][3]


def locate(model: VLA, head: nn.Linear, images, ids, mask):
    """images (B, C, 3, H, W) in [-1, 1], instruction ids / mask (B, L) -> the head's (B, 2R), normalised."""
    return head(model.encode_keypoints(images, model.embed_instruction(ids), mask).flatten(1))


def vision_state(model: VLA) -> dict:
    return {k: v for k, v in model.state_dict().items() if k.startswith(VISION_PREFIXES)}


def ground(o: Options, command: str = "") -> dict:
    out = Path(o.out)
    ck_path = out / "ckpt.pt"
    resume = load_checkpoint(ck_path) if o.resume and ck_path.is_file() else None
    if resume is not None and (diff := {k: (resume["options"].get(k), v) for k, v in dataclasses.asdict(o).items()
                                        if k not in ("resume", "threads", "steps", "workers") and resume["options"].get(k) != v}):
        raise ValueError(f"--resume: options differ from {ck_path} (was, now): {diff}")
    random.seed(o.seed), np.random.seed(o.seed), torch.manual_seed(o.seed)
    g = torch.Generator().manual_seed(o.seed)
    torch.set_num_threads(o.threads or cpu_threads())
    cams = o.cameras or list(world.suite_of(o.task).CAMERAS)

    t0 = time.perf_counter()
    X, Y, texts, roles = render_parallel(o.task, range(GROUND_SEED_OFFSET, GROUND_SEED_OFFSET + o.layouts), cams,
                                         o.image_size, o.expert_frac, o.workers, o.expert_steps, o.grasp_natural)
    Xh, Yh, texts_h, _ = render_parallel(o.task, range(HOLDOUT_SEED_OFFSET, HOLDOUT_SEED_OFFSET + o.holdout), cams,
                                         o.image_size, o.expert_frac, o.workers, o.expert_steps, o.grasp_natural)
    if o.phrasings == "grammar":  # the same layouts, asked for in other words
        texts = [words.sample(o.task, s) for s in range(GROUND_SEED_OFFSET, GROUND_SEED_OFFSET + o.layouts)]
        texts_h = [words.sample(o.task, s) for s in range(HOLDOUT_SEED_OFFSET, HOLDOUT_SEED_OFFSET + o.holdout)]
    print(f"rendered {o.layouts} + {o.holdout} layouts of {o.task} ({cams}) in {time.perf_counter() - t0:.0f} s; "
          f"targets: (x, y) of {roles}")

    init = load_checkpoint(o.init_from) if o.init_from and resume is None else None
    if init is not None and (init.get("kind") != "grounding" or init["meta"]["cameras"] != cams
                             or world.suite_of(init["meta"]["task"]) is not world.suite_of(o.task)):
        raise ValueError(f"--init-from {o.init_from}: not a ground.py checkpoint of {o.task}'s scene with cameras {cams}")
    # another task of the scene transfers its weights only: its head and tokenizer name other objects and words
    src = resume or (init if init is not None and init["meta"]["task"] == o.task else None)
    tok = Tokenizer(src["tokenizer"] if src else train_tokenizer(sorted(set(texts)), PRESETS[o.preset]["vocab_size"]))
    cfg = ModelConfig.from_preset(o.preset, vit_stem="conv", vit_pos="sincos", keypoints=o.keypoints,
                                  kp_word_order=o.word_order, use_state=False,
                                  action_dim=1, state_dim=1, n_cameras=len(cams), image_size=tuple(o.image_size),
                                  vocab_size=tok.vocab_size, n_stage=0, keyframe_head=False)
    model = VLA(cfg)
    head = nn.Linear(len(cams) * o.keypoints * 2, Y.shape[1])  # all keypoints' (x, y) -> every role's (x, y)
    mu, sd = Y.mean(0), Y.std(0).clamp(min=1e-3)  # the head's target normalisation (kept from --init-from)
    if src is not None:
        mu, sd = torch.tensor(src["meta"]["target_mean"]), torch.tensor(src["meta"]["target_std"])
    params = [p for n, p in model.named_parameters() if n.startswith(VISION_PREFIXES) and p.requires_grad]
    params += list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    ids, mask = tok(texts, cfg.lang_len)
    ids_h, mask_h = tok(texts_h, cfg.lang_len)

    def held_out_cm():  # mean distance per role, cm
        model.eval()
        with torch.no_grad():
            p = torch.cat([locate(model, head, images_to_input(Xh[i:i + 100], cfg.image_size), ids_h[i:i + 100], mask_h[i:i + 100])
                           for i in range(0, len(Xh), 100)]) * sd + mu
        model.train()
        return ((p - Yh).view(len(Yh), -1, 2).norm(dim=-1).mean(0) * 100).tolist()

    chance = ((mu - Yh).view(len(Yh), -1, 2).norm(dim=-1).mean(0) * 100).tolist()
    step, curve = 0, []
    if init is not None:  # the weights (and head) only: a fresh optimiser, schedule and curve
        try:
            weights = {k: v.float() for k, v in init["vision"].items()}  # a run's or a shipped front end's
            if src is init:
                head.load_state_dict({k: v.float() for k, v in init["head"].items()})
            else:  # another task: a word piece keeps its embedding where the old tokenizer has the same piece
                old_tok, emb = Tokenizer(init["tokenizer"]), model.lang_emb.weight.detach().clone()
                for i in range(tok.vocab_size):
                    piece = tok.sp.id_to_piece(i)
                    if old_tok.sp.id_to_piece(j := old_tok.sp.piece_to_id(piece)) == piece:
                        emb[i] = weights["lang_emb.weight"][j]
                weights["lang_emb.weight"] = emb
            model.load_state_dict(weights, strict=False)
        except RuntimeError as e:
            raise ValueError(f"--init-from {o.init_from}: does not fit --preset {o.preset} --keypoints {o.keypoints}: {e}") from None
    if resume is not None:
        model.load_state_dict(resume["model"]), head.load_state_dict(resume["head"])
        optimizer.load_state_dict(resume["optimizer"]), g.set_state(resume["rng"])
        step, curve = resume["step"], resume["curve"]
    print(f"grounding {o.task}: held-out mean predictor {', '.join(f'{r} {c:.1f} cm' for r, c in zip(roles, chance))} "
          f"| start step {step}")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    while step < o.steps:
        step += 1
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, o)
        i = torch.randint(0, len(X), (o.batch_size,), generator=g)
        images = images_to_input(X[i], cfg.image_size)                     # (B, C, 3, H, W)
        if o.shift:
            images = random_shift(images, torch.randint(0, 2 * o.shift + 1, (len(i), len(cams), 2), generator=g), o.shift)
        loss = ((locate(model, head, images, ids[i], mask[i]) - (Y[i] - mu) / sd) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % o.eval_every == 0 or step == o.steps:
            cm = held_out_cm()
            curve.append(dict(step=step, loss=round(loss.item(), 4), held_out_cm=[round(c, 2) for c in cm]))
            print(f"step {step:5d}  loss {loss.item():.3f}  held-out {', '.join(f'{r} {c:.1f} cm' for r, c in zip(roles, cm))}"
                  f"  {(time.perf_counter() - t_start) / (step - (resume or {}).get('step', 0)):.2f} s/step", flush=True)
            save_checkpoint(ck_path, dict(
                kind="grounding", model=model.state_dict(), vision=vision_state(model), head=head.state_dict(),
                optimizer=optimizer.state_dict(), rng=g.get_state(), step=step, curve=curve,
                options=dataclasses.asdict(o), model_config=dataclasses.asdict(cfg), tokenizer=tok.proto,
                meta=dict(task=o.task, cameras=cams, roles=roles, target_mean=mu.tolist(), target_std=sd.tolist()),
                git=git_revision()))
    result = dict(task=o.task, cameras=cams, roles=roles, layouts=o.layouts, holdout=o.holdout,
                  mean_predictor_cm=[round(c, 2) for c in chance], curve=curve,
                  command=command or "python lab/ground.py " + " ".join(sys.argv[1:]), git=git_revision())
    data.atomic_write_bytes(out / "ground.json", lambda f: f.write((json.dumps(result, indent=1) + "\n").encode()))
    return result


def lr_at(step: int, o: Options) -> float:
    """Linear warm-up, constant, then down in a line over the last --decay steps (the last at 1/(decay + 1))."""
    return o.lr * min(1.0, step / max(1, o.warmup), (o.steps - step + 1) / (o.decay + 1))


def load_front_end(path) -> tuple:
    """(model, head, tokenizer, meta) of a ground.py checkpoint or a shipped front end (export), in eval mode.
    Only the front end's weights are loaded: the rest of the VLA is never run here."""
    ck = load_checkpoint(path)
    if ck.get("kind") != "grounding":
        raise ValueError(f"{path}: not a ground.py checkpoint")
    model = VLA(ModelConfig.from_dict(ck["model_config"], str(path))).eval()
    if bad := model.load_state_dict({k: v.float() for k, v in ck["vision"].items()}, strict=False).unexpected_keys:
        raise ValueError(f"{path}: weights that do not fit the front end: {bad}")
    head = nn.Linear(*ck["head"]["weight"].shape[::-1])
    head.load_state_dict({k: v.float() for k, v in ck["head"].items()})
    return model, head.eval(), Tokenizer(ck["tokenizer"]), ck["meta"]


@torch.no_grad()
def held_out(path, layouts: int = 20, expert_frac: float = 0.5, first_seed: int = HOLDOUT_SEED_OFFSET + 5_000) -> list:
    """Mean error (cm) per named object of a front end on freshly rendered layouts of its task (seeds that no
    ground.py run trains or holds out on), a fraction `expert_frac` of them from inside the expert's rollout."""
    model, head, tok, meta = load_front_end(path)
    X, Y, texts, roles = render(meta["task"], range(first_seed, first_seed + layouts), meta["cameras"],
                                model.cfg.image_size, expert_frac)
    assert roles == meta["roles"], (roles, meta["roles"])
    ids, mask = tok(texts, model.cfg.lang_len)
    pos = locate(model, head, images_to_input(X, model.cfg.image_size), ids, mask)
    pos = pos * torch.tensor(meta["target_std"]) + torch.tensor(meta["target_mean"])
    return ((pos - Y).view(len(Y), -1, 2).norm(dim=-1).mean(0) * 100).tolist()


def export(ckpt: str, out: str, layouts: int = 100) -> dict:
    """A ground.py run as a front end to ship: its weights in fp16 without optimiser state (OUT, a few MB),
    and OUT with .json: the ground.py commands that made it (its --init-from chain, first stage first), their
    git revisions, the training curve's last held-out error and the error of the shipped fp16 weights on
    `layouts` freshly rendered layouts (held_out)."""
    ck, stages, path = load_checkpoint(ckpt), [], Path(ckpt)
    while True:  # the curriculum: each stage's ground.json, back along --init-from
        if path.with_suffix(".json").is_file():  # started from a shipped front end: its stages come first
            stages[:0] = json.loads(path.with_suffix(".json").read_text())["stages"]
            break
        run = json.loads((path.parent / "ground.json").read_text())
        stages.insert(0, {k: run[k] for k in ("command", "git")} | {"held_out_cm": run["curve"][-1]["held_out_cm"]})
        prev = load_checkpoint(path)["options"]["init_from"]
        if not prev:
            break
        path = Path(prev)
    half = lambda sd: {k: v.half() for k, v in sd.items()}
    shipped = {k: ck[k] for k in ("kind", "model_config", "tokenizer", "meta", "options", "step", "git")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, shipped | {"vision": half(ck["vision"]), "head": half(ck["head"])})
    info = dict(task=ck["meta"]["task"], roles=ck["meta"]["roles"], cameras=ck["meta"]["cameras"], stages=stages,
                shipped_held_out_cm=[round(c, 2) for c in held_out(out, layouts)], held_out_layouts=layouts,
                expert_frac=0.5, bytes=out.stat().st_size)
    data.atomic_write_bytes(out.with_suffix(".json"), lambda f: f.write((json.dumps(info, indent=1) + "\n").encode()))
    print(f"{out}: {info['bytes'] / 1e6:.1f} MB, held-out error {info['shipped_held_out_cm']} cm on {layouts} new layouts")
    return info


def check(ckpt: str, folder: str, steps=(0, 10, 20, 30), out: str = "", command: str = "") -> dict:
    """The grounding head on a demonstration folder's own frames: the error (cm) per named object at each
    step t of every episode. Labels are the objects' positions at step t, found by resetting the episode's
    layout seed and replaying its recorded actions (the simulator is deterministic), so they follow an object
    the arms carry. Shows whether a front end grounded on rendered layouts transfers to the frames a policy
    sees, arms included, through every phase; `moved_cm` says how far each object had moved by then."""
    model, head, tok, meta = load_front_end(ckpt)
    cfg, mu, sd = model.cfg, torch.tensor(meta["target_mean"]), torch.tensor(meta["target_std"])
    env = world.make_env(meta["task"], render=False)  # the labels: the objects at each step, as located() reads them
    errors, moved = {t: [] for t in steps}, {t: [] for t in steps}
    for path in data.episode_paths(folder):
        ep = data.load_episode(path)
        if ep["task"] != meta["task"] or any(c not in ep["images"] for c in meta["cameras"]):
            raise data.DataError(f"{path}: task {ep['task']} / cameras {list(ep['images'])}; the grounding run "
                                 f"has {meta['task']} / {meta['cameras']}")
        obs = env.reset(int(ep["seed"]))
        ts = [t for t in steps if t < len(ep["qpos"])]
        if not ts:
            continue
        labels = []  # the objects at every step up to the last one asked for: the actions replayed
        for t in range(max(ts) + 1):
            if np.abs(obs["qpos"] - ep["qpos"][t]).max() > 1e-3:
                raise data.DataError(f"{path}: replaying its actions leaves its recorded qpos at step {t} (not made "
                                     f"by this simulator version, or edited): no labels past that step")
            labels.append(world.located(env)[1])
            obs = env.step(ep["action"][t])
        y = torch.tensor(np.stack([labels[t] for t in ts]), dtype=torch.float32)   # (len(ts), 2R)
        ids, mask = tok([ep["instruction"]] * len(ts), cfg.lang_len)
        x = images_to_input(torch.from_numpy(np.stack([ep["images"][c][ts] for c in meta["cameras"]], 1)), cfg.image_size)
        with torch.no_grad():  # one batch per episode: its frames at every requested step
            pred = locate(model, head, x, ids, mask) * sd + mu                    # (len(ts), 2R)
        for t, e in zip(ts, ((pred - y).view(len(ts), -1, 2).norm(dim=-1) * 100).tolist()):
            errors[t].append(e)
        y0 = torch.tensor(labels[0], dtype=torch.float32)                           # at reset
        for t, m in zip(ts, ((y - y0).view(len(ts), -1, 2).norm(dim=-1) * 100).tolist()):
            moved[t].append(m)
    result = dict(ckpt=ckpt, data=folder, roles=meta["roles"],
                  error_cm={str(t): np.mean(e, 0).round(2).tolist() for t, e in errors.items() if e},
                  moved_cm={str(t): np.mean(m, 0).round(1).tolist() for t, m in moved.items() if m},
                  episodes={str(t): len(e) for t, e in errors.items()},
                  command=command or "python lab/ground.py " + " ".join(sys.argv[1:]), git=git_revision())
    for t, e in result["error_cm"].items():
        print(f"t={int(t):3d}  {', '.join(f'{r} {c:.1f} cm' for r, c in zip(meta['roles'], e))}  ({result['episodes'][t]} "
              f"episodes; moved {', '.join(f'{c:.1f}' for c in result['moved_cm'][t])} cm)")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        data.atomic_write_bytes(Path(out), lambda f: f.write((json.dumps(result, indent=1) + "\n").encode()))
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["export"]:  # python lab/ground.py export --ckpt RUN/ckpt.pt --out frontends/TASK.pt
            a = argparse.ArgumentParser(prog="ground.py export", description=export.__doc__.split("\n")[0])
            a.add_argument("--ckpt", required=True), a.add_argument("--out", required=True)
            a.add_argument("--layouts", type=int, default=100, help="fresh layouts for the shipped error")
            args = a.parse_args(argv[1:])
            export(args.ckpt, args.out, args.layouts)
        elif argv[:1] == ["check"]:  # python lab/ground.py check --ckpt RUN/ckpt.pt --data DIR [--out X.json]
            a = argparse.ArgumentParser(prog="ground.py check", description=check.__doc__.split("\n")[0])
            a.add_argument("--ckpt", required=True), a.add_argument("--data", required=True)
            a.add_argument("--steps", type=int, nargs="*", default=[0, 10, 20, 30]), a.add_argument("--out", default="")
            args = a.parse_args(argv[1:])
            check(args.ckpt, args.data, tuple(args.steps), args.out, command="python lab/ground.py " + " ".join(argv))
        else:
            ground(data.parse_options(Options, argv, "ground.py", __doc__.split("\n\n")[0]),
                   command="python lab/ground.py " + " ".join(argv))
    except (ValueError, FileNotFoundError) as e:  # data.DataError is a ValueError
        print(f"ground.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
