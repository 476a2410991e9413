"""MuJoCo bimanual tabletop: scene, task suite, success / progress stages, and inverse kinematics.

Shared by data.py (demonstrations), eval_sim.py (closed-loop evaluation) and experts.py (scripted experts).
Read top to bottom: scene -> tasks (layout, instruction, stages, success) -> Env -> IK.

Action (14-D, absolute): [left waist, shoulder, elbow, forearm_roll, wrist_pitch, wrist_roll, left_gripper,
                          right ... same ..., right_gripper]; joints in rad, gripper normalised 1 = open, 0 = closed.
qpos (14-D): the same layout, measured; the gripper is the measured finger opening / 0.08 m (a grasp on a
4 cm block reads about 0.5: partly closed, as on a real gripper).
Control at 20 Hz (FPS); physics at 2 ms (25 substeps per control step).
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering without a display
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "assets"
FPS = 20
SUBSTEPS = 25  # 25 x 2 ms = 50 ms per control step
ARMS = ("left", "right")
JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_pitch", "wrist_roll")
ACTION_NAMES = [f"{a}_{j}" for a in ARMS for j in (*JOINTS, "gripper")]
GRIPPER_INDICES = [6, 13]
CAMERAS = ("top", "left_wrist", "right_wrist")
MAX_OPENING = 0.08  # m, both fingers
EVAL_SEED_OFFSET = 1_000_000  # evaluation seeds start here; demonstration seeds stay below (disjoint by construction)
BLOCK = 0.02  # block half-size (4 cm cube)
ROD_HALF = (0.09, 0.015, 0.015)  # handover stick
BAR_HALF = (0.16, 0.015, 0.015)  # two-arm bar
COLORS = {"red": (0.85, 0.15, 0.12), "green": (0.15, 0.7, 0.2), "blue": (0.15, 0.3, 0.9),
          "yellow": (0.95, 0.85, 0.1)}
PAD_COLORS = {"white": (0.95, 0.95, 0.95), "black": (0.05, 0.05, 0.05), "purple": (0.6, 0.2, 0.75),
              "orange": (1.0, 0.55, 0.0)}
# Base placement of the two arms, facing the table centre (quaternions: identity and 180 deg about z).
ARM_BASES = {"left": ("-0.42 0 0", "1 0 0 0"), "right": ("0.42 0 0", "0 0 0 1")}
# Servo gains per joint (kp, kv): stiff enough to track 20 Hz targets, damped to avoid overshoot.
GAINS = {"waist": (150, 8), "shoulder": (200, 10), "elbow": (150, 8), "forearm_roll": (40, 2),
         "wrist_pitch": (40, 2), "wrist_roll": (20, 1)}
GRIP_KP = 300  # N/m on the finger tendon: about 6 N squeeze on a 4 cm block, ample for friction holds


# ============================================================================ scene

@dataclass
class Obj:
    """A task object. kind: 'block' | 'rod' | 'bar' (free bodies) or 'pad' (flat marker, no collision)."""
    name: str
    kind: str
    color: str

    @property
    def half(self):
        return {"block": (BLOCK,) * 3, "rod": ROD_HALF, "bar": BAR_HALF, "pad": (0.04, 0.04, 0.001)}[self.kind]


def _object_xml(o: Obj) -> str:
    rgb = (COLORS | PAD_COLORS)[o.color]
    size = " ".join(f"{h:g}" for h in o.half)
    if o.kind == "pad":  # visual target on the table; objects rest on the table beneath it
        return (f'<body name="{o.name}" pos="0 0 0.001"><geom name="{o.name}" class="marker" size="{size}" '
                f'rgba="{rgb[0]} {rgb[1]} {rgb[2]} 1"/></body>')
    return (f'<body name="{o.name}" pos="0 0 {o.half[2]}"><freejoint name="{o.name}"/>'
            f'<geom name="{o.name}" class="object" type="box" size="{size}" rgba="{rgb[0]} {rgb[1]} {rgb[2]} 1"/></body>')


def build_model(objects: list[Obj]) -> mujoco.MjModel:
    """Compile the scene: table, two arms, cameras, and the task's objects."""
    arm = (ASSETS / "arm.xml").read_text()
    xml = (ASSETS / "bimanual.xml").read_text()
    for side in ARMS:
        pos, quat = ARM_BASES[side]
        body = arm.replace("PREFIX", f"{side}_").replace("BASE_POS", pos).replace("BASE_QUAT", quat)
        xml = xml.replace(f"ARM_{side.upper()}", body)
    actuators = []
    for side in ARMS:
        for j in JOINTS:
            kp, kv = GAINS[j]
            actuators.append(f'<position name="{side}_{j}" joint="{side}_{j}" kp="{kp}" kv="{kv}" '
                             f'ctrlrange="-3.1 3.1" forcerange="-40 40"/>')
        actuators.append(f'<position name="{side}_gripper" tendon="{side}_grip" kp="{GRIP_KP}" kv="5" '
                         f'ctrlrange="0 0.04" forcerange="-8 8"/>')
    xml = xml.replace("OBJECTS", "\n".join(_object_xml(o) for o in objects))
    xml = xml.replace("ACTUATORS", "\n".join(actuators))
    return mujoco.MjModel.from_xml_string(xml)


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


# ============================================================================ tasks

@dataclass
class Layout:
    """Everything random about one episode, drawn from (task, seed) alone."""
    poses: dict  # object name -> (x, y, yaw)
    instruction: str
    roles: dict  # role -> object name, e.g. {"target": "block_red", "pad": "pad_white"}
    arm_for: dict = field(default_factory=dict)  # object name -> arm that handles it


def _sample_positions(rng, regions, min_dist=0.09):
    """Rejection-sample non-overlapping (x, y, yaw); region = (xlo, xhi, ylo, yhi)."""
    for _ in range(1000):
        pts = [(rng.uniform(r[0], r[1]), rng.uniform(r[2], r[3])) for r in regions]
        if all(np.hypot(a[0] - b[0], a[1] - b[1]) >= min_dist for i, a in enumerate(pts) for b in pts[i + 1:]):
            return [(x, y, rng.uniform(-np.pi / 4, np.pi / 4)) for x, y in pts]
    raise RuntimeError("could not place objects without overlap")


def _side_region(side):  # blocks on one half of the table: 20 cm in x, 30 cm in y
    return (0.08, 0.28, -0.15, 0.15) if side > 0 else (-0.28, -0.08, -0.15, 0.15)


def _arm_of(x):
    return "right" if x > 0 else "left"


@dataclass
class Task:
    """A task of the suite. See TASKS for the instances; stage kinds decide failure types in evaluation."""
    name: str
    gripper_events: int  # close + open events of the expert, both arms summed
    arms: tuple  # arms the expert may use
    both_arms: bool  # True: the task needs both arms at once; False: one arm, on the object's side
    max_steps: int  # evaluation step limit: about 1.5 x the expert's longest episode (results/experts.json)
    phrasings: tuple  # instruction templates; the layout fills in colours
    description: str

    def objects(self) -> list[Obj]:
        return TASK_OBJECTS[self.name]()

    def layout(self, seed: int) -> Layout:
        # A private generator per (task, seed): crc32 so the stream does not depend on Python's hash seed.
        rng = np.random.default_rng([zlib.crc32(self.name.encode()), int(seed)])
        return TASK_LAYOUTS[self.name](self, rng)


def _blocks(*colors):
    return [Obj(f"block_{c}", "block", c) for c in colors]


def _phrase(task, rng, **kw):
    return task.phrasings[rng.integers(len(task.phrasings))].format(**kw)


def instruction_fields(layout: Layout) -> dict:
    """The words a layout's instruction fills in, read back from its roles: {color} (the target's), {pad}, and
    {c0}, {c1}, {c2} (the blocks in stacking order); so another phrasing can name the same objects."""
    words = {role: name.split("_", 1)[1] for role, name in layout.roles.items() if "_" in name}
    fields = {"color": words["target"]} if "target" in words else {}
    fields |= {"pad": words["pad"]} if "pad" in words else {}
    return fields | {f"c{i}": words[f"block{i}"] for i in range(3) if f"block{i}" in words}


def _layout_lift(task, rng):
    colors = list(rng.permutation(list(COLORS)))[:3]  # 3 of 4 blocks on the table, the 4th parked away
    sides = rng.choice([-1, 1], size=3)
    poses = _sample_positions(rng, [_side_region(s) for s in sides])
    names = [f"block_{c}" for c in colors]
    p = dict(zip(names, poses))
    _park_unused(p, [f"block_{c}" for c in COLORS])
    target = names[0]
    return Layout(p, _phrase(task, rng, color=colors[0]), {"target": target}, {target: _arm_of(p[target][0])})


def _park_unused(poses, names):
    """Objects a layout does not use are parked off the table's far edge (out of the workspace)."""
    for i, n in enumerate(x for x in names if x not in poses):
        poses[n] = (-0.5 + 0.12 * i, 0.55, 0.0)


def _layout_place(task, rng):
    side = rng.choice([-1, 1])
    colors = list(rng.permutation(list(COLORS)))[:2]
    pads = list(rng.permutation(list(PAD_COLORS)))[:2]
    poses = _sample_positions(rng, [_side_region(side)] * 4, min_dist=0.1)
    names = [f"block_{c}" for c in colors] + [f"pad_{c}" for c in pads]
    p = dict(zip(names, poses))
    _park_unused(p, [f"block_{c}" for c in COLORS])
    for n in [f"pad_{c}" for c in PAD_COLORS]:
        p.setdefault(n, (0.0, 0.8, 0.0))  # unused pads hidden under the far floor
    target = names[0]
    return Layout(p, _phrase(task, rng, color=colors[0], pad=pads[0]), {"target": target, "pad": names[2]},
                  {target: _arm_of(p[target][0])})


def _layout_lift_bar(task, rng):
    bar = (rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), rng.uniform(-np.pi / 4, np.pi / 4))
    # one distractor block away from the bar, on the near or far side
    y = rng.choice([-1, 1]) * rng.uniform(0.2, 0.26)
    p = {"bar": bar, "block_yellow": (rng.uniform(-0.25, 0.25), y, rng.uniform(-np.pi / 4, np.pi / 4))}
    return Layout(p, _phrase(task, rng), {"target": "bar"}, {})


def _layout_handover(task, rng):
    colors = list(rng.permutation(["red", "blue"]))
    rods = _sample_positions(rng, [(0.06, 0.28, -0.21, -0.01), (0.06, 0.28, 0.01, 0.21)], min_dist=0.1)
    rng.shuffle(rods)
    pad = (rng.uniform(-0.3, -0.1), rng.uniform(-0.15, 0.15), 0.0)
    p = {f"rod_{colors[0]}": rods[0], f"rod_{colors[1]}": rods[1], "pad_white": pad}
    return Layout(p, _phrase(task, rng, color=colors[0]), {"target": f"rod_{colors[0]}", "pad": "pad_white"}, {})


def _layout_stack(task, rng, n):
    colors = list(rng.permutation(list(COLORS)))  # n stacked + (4 - n) distractors, all on the table
    k = min(4, n + 1)
    sides = rng.choice([-1, 1], size=k)
    centre = (rng.uniform(-0.08, 0.08), rng.uniform(-0.12, 0.12), 0.0)
    poses = _sample_positions(rng, [_side_region(s) for s in sides] + [(centre[0],) * 2 + (centre[1],) * 2],
                              min_dist=0.09)
    names = [f"block_{c}" for c in colors[:k]]
    p = dict(zip(names, poses[:k]))
    p["pad_white"] = (centre[0], centre[1], 0.0)
    _park_unused(p, [f"block_{c}" for c in COLORS])
    order = names[:n]
    kw = {f"c{i}": colors[i] for i in range(n)}
    roles = {f"block{i}": order[i] for i in range(n)} | {"pad": "pad_white"}
    return Layout(p, _phrase(task, rng, **kw), roles, {b: _arm_of(p[b][0]) for b in order})


TASK_OBJECTS = {
    "lift_block": lambda: _blocks(*COLORS),
    "place_block": lambda: _blocks(*COLORS) + [Obj(f"pad_{c}", "pad", c) for c in PAD_COLORS],
    "lift_bar": lambda: [Obj("bar", "bar", "orange"), Obj("block_yellow", "block", "yellow")],
    "handover": lambda: [Obj("rod_red", "rod", "red"), Obj("rod_blue", "rod", "blue"), Obj("pad_white", "pad", "white")],
    "stack_two": lambda: _blocks(*COLORS) + [Obj("pad_white", "pad", "white")],
    "stack_three": lambda: _blocks(*COLORS) + [Obj("pad_white", "pad", "white")],
}
TASK_LAYOUTS = {
    "lift_block": _layout_lift, "place_block": _layout_place, "lift_bar": _layout_lift_bar,
    "handover": _layout_handover, "stack_two": lambda t, r: _layout_stack(t, r, 2),
    "stack_three": lambda t, r: _layout_stack(t, r, 3),
}
TASKS = {t.name: t for t in [
    Task("lift_block", 1, ("left", "right"), False, 110,
         ("lift the {color} block", "pick up the {color} cube", "raise the {color} block off the table"),
         "Three blocks; lift the named one >= 5 cm and hold it 1 s (arm on the block's side)."),
    Task("place_block", 2, ("left", "right"), False, 155,
         ("put the {color} block on the {pad} pad", "place the {color} cube onto the {pad} square",
          "move the {color} block to the {pad} pad"),
         "Two blocks, two pads on one side; place the named block on the named pad (arm on that side)."),
    Task("lift_bar", 2, ("left", "right"), True, 125,
         ("lift the bar with both arms", "pick up the long bar using both grippers", "raise the bar with both hands"),
         "A long bar; both arms grasp it and lift it level >= 5 cm for 1 s."),
    Task("handover", 4, ("left", "right"), True, 290,
         ("hand the {color} stick to the left arm and put it on the pad",
          "pass the {color} stick from right to left, then place it on the pad",
          "give the {color} stick to the other arm and set it on the white pad"),
         "Two sticks on the right; the right arm picks the named one, hands it to the left, which places it."),
    Task("stack_two", 4, ("left", "right"), False, 310,
         ("put the {c0} block on the white pad, then stack the {c1} block on it",
          "place {c0} on the pad and {c1} on top of {c0}",
          "stack the {c1} block onto the {c0} block on the white square"),
         "Three blocks; the named base goes on the pad, the named top on it."),
    Task("stack_three", 6, ("left", "right"), False, 435,
         ("stack the {c0}, {c1} and {c2} blocks on the white pad, in that order",
          "build a tower on the pad: {c0} at the bottom, then {c1}, then {c2}",
          "put {c0} on the pad, {c1} on {c0}, and {c2} on {c1}"),
         "Four blocks; stack the three named ones in the named order on the pad."),
]}


# ============================================================================ environment

class Env:
    """One task's scene. reset(seed) -> obs; step(action) -> obs. Tracks progress stages and success.

    obs = {"images": {camera: (H, W, 3) uint8}, "qpos": (14,) float32, "instruction": str,
           "prev_qpos": (14,) float32, the qpos one control step earlier (at reset: qpos; train.py --velocity)}
    twin.FrankaEnv subclasses it (one arm named "arm"): everything below that loops over arms uses self.arms.
    """

    arms = ARMS

    def __init__(self, task: str, cameras=CAMERAS, image_size=(96, 96), render=True):
        if task not in TASKS:
            raise ValueError(f"unknown task '{task}'; known tasks: {', '.join(TASKS)}")
        bad = [c for c in cameras if c not in CAMERAS]
        if bad:
            raise ValueError(f"unknown camera(s) {bad}; known cameras: {', '.join(CAMERAS)}")
        self.task = TASKS[task]
        self.objects = self.task.objects()
        self.model = build_model(self.objects)
        self.data = mujoco.MjData(self.model)
        self.cameras = tuple(cameras)
        self.image_size = tuple(image_size)
        self.renderer = mujoco.Renderer(self.model, *self.image_size) if render and self.cameras else None
        m = self.model
        jid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)  # noqa: E731
        self.arm_qadr = {a: np.array([m.jnt_qposadr[jid(f"{a}_{j}")] for j in JOINTS]) for a in ARMS}
        self.arm_dadr = {a: np.array([m.jnt_dofadr[jid(f"{a}_{j}")] for j in JOINTS]) for a in ARMS}
        self.finger_qadr = {a: [m.jnt_qposadr[jid(f"{a}_finger_{f}")] for f in "ab"] for a in ARMS}
        self.jnt_range = {a: m.jnt_range[[jid(f"{a}_{j}") for j in JOINTS]] for a in ARMS}
        self.tcp = {a: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, f"{a}_tcp") for a in ARMS}
        self.pad_geoms = {a: {mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"{a}_pad_{f}") for f in "ab"} for a in ARMS}
        self.obj_geom = {o.name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, o.name) for o in self.objects}
        self.obj_body = {o.name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, o.name) for o in self.objects}
        self.obj_qadr = {o.name: m.jnt_qposadr[jid(o.name)] for o in self.objects if o.kind != "pad"}
        self.home = home_qpos(self)
        self.stages = STAGES[self.task.name]
        self.success_fn = SUCCESS[self.task.name]

    # -- episode
    def reset(self, seed: int) -> dict:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self.seed = int(seed)
        self.layout = self.task.layout(seed)
        for o in self.objects:
            x, y, yaw = self.layout.poses.get(o.name, (0.0, 0.9, 0.0))
            z = o.half[2] if abs(y) < 0.45 else -0.75 + o.half[2]  # parked objects rest on the floor
            if o.name not in self.obj_qadr:  # fixed bodies (pads; twin.py's bins) are moved in the model
                z0 = 0.001 if o.kind == "pad" else 0.0
                m.body_pos[self.obj_body[o.name]] = (x, y, z0 if abs(y) < 0.45 else -0.75 + z0)
                m.body_quat[self.obj_body[o.name]] = yaw_quat(yaw)
            else:
                a = self.obj_qadr[o.name]
                d.qpos[a:a + 7] = (x, y, z, *yaw_quat(yaw))
        for a in self.arms:
            d.qpos[self.arm_qadr[a]] = self.home[a]
            d.qpos[self.finger_qadr[a]] = MAX_OPENING / 2
        d.ctrl[:] = self.home_action()
        mujoco.mj_forward(m, d)
        self.t = 0
        self.stage = 0  # furthest progress stage reached (index into self.stages; len = all done)
        self.stage_steps = []  # step at which each stage was reached
        self.hold = 0
        self.success = False
        self.success_step = None
        obs = self.observe()
        return obs | {"prev_qpos": obs["qpos"].copy()}

    def home_action(self) -> np.ndarray:
        return np.concatenate([np.r_[self.home[a], 1.0] for a in ARMS]).astype(np.float32)

    def step(self, action, render: bool = True) -> dict:
        """One control step. render=False leaves obs["images"] empty: an evaluator skips the cameras at steps
        where the policy reads none (rendering is most of a step's cost; the physics is the same)."""
        prev = self.qpos()
        self.apply(action)
        return self.observe(render) | {"prev_qpos": prev}

    def apply(self, action) -> None:
        """Send one control step's action and advance the physics (no rendering)."""
        action = np.asarray(action, np.float64)
        if action.shape != (14,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 14 finite numbers, got shape {action.shape}")
        ctrl = np.empty(14)
        for i, a in enumerate(ARMS):
            ctrl[7 * i:7 * i + 6] = action[7 * i:7 * i + 6]
            ctrl[7 * i + 6] = np.clip(action[7 * i + 6], 0, 1) * MAX_OPENING / 2
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)
        self.t += 1
        self._update_progress()

    def qpos(self) -> np.ndarray:
        d = self.data
        parts = []
        for a in ARMS:
            opening = d.qpos[self.finger_qadr[a]].sum() / MAX_OPENING
            parts.append(np.r_[d.qpos[self.arm_qadr[a]], np.clip(opening, 0, 1)])
        return np.concatenate(parts).astype(np.float32)

    def render(self, camera: str) -> np.ndarray:
        self.renderer.update_scene(self.data, camera=camera)
        return self.renderer.render().copy()

    def observe(self, render: bool = True) -> dict:
        images = {c: self.render(c) for c in self.cameras} if self.renderer and render else {}
        return {"images": images, "qpos": self.qpos(), "instruction": self.layout.instruction}

    # -- state queries used by stages, success and the experts
    def obj_pos(self, name) -> np.ndarray:
        return self.data.xpos[self.obj_body[name]].copy()

    def obj_yaw(self, name) -> float:
        R = self.data.xmat[self.obj_body[name]].reshape(3, 3)
        return float(np.arctan2(R[1, 0], R[0, 0]))

    def obj_axis(self, name) -> np.ndarray:  # the object's long (local x) axis in the world
        return self.data.xmat[self.obj_body[name]].reshape(3, 3)[:, 0].copy()

    def objects_half(self, name) -> tuple:
        return next(o.half for o in self.objects if o.name == name)

    def finger_dir(self, arm, p) -> np.ndarray:
        """Direction the fingers separate along when this arm reaches p top-down (used by the experts)."""
        return natural_finger_dir(arm, p)

    def tcp_pos(self, arm) -> np.ndarray:
        return self.data.site_xpos[self.tcp[arm]].copy()

    def grasped_by(self, name) -> set:
        """Arms whose two finger pads both touch the object (a friction grasp)."""
        g = self.obj_geom[name]
        touching = {a: set() for a in self.arms}
        for c in self.data.contact[:self.data.ncon]:
            other = c.geom2 if c.geom1 == g else c.geom1 if c.geom2 == g else None
            if other is None:
                continue
            for a in self.arms:
                if other in self.pad_geoms[a]:
                    touching[a].add(other)
        return {a for a in self.arms if len(touching[a]) == 2}

    def touched_by_gripper(self, name) -> bool:
        g = self.obj_geom[name]
        pads = set().union(*(self.pad_geoms[a] for a in self.arms))
        return any((c.geom1 == g and c.geom2 in pads) or (c.geom2 == g and c.geom1 in pads)
                   for c in self.data.contact[:self.data.ncon])

    def _update_progress(self):
        # Stages are latched in order: stage k counts once it holds after stage k-1 was reached.
        while self.stage < len(self.stages) and self.stages[self.stage][2](self):
            self.stage += 1
            self.stage_steps.append(self.t)
        ok, need = self.success_fn(self)
        self.hold = self.hold + 1 if ok else 0
        if self.hold >= need and not self.success:
            self.success, self.success_step = True, self.t


# ============================================================================ stages and success
# Each stage: (name, kind, predicate(env)). kind "motion" = reaching / grasping in free space (gripper open);
# kind "skill" = contact-constrained execution after a grasp. eval_sim.py derives failure types from them.

def _reached(role, arm=None, dist=0.04):
    """A tcp within `dist` (horizontally) of the object's long axis and 6 cm of its height."""
    def f(e):
        n = e.layout.roles[role]
        p, ax, h = e.obj_pos(n), e.obj_axis(n), e.objects_half(n)
        seg = h[0] - h[1]  # half-length of the graspable axis: 0 for a cube, longer for sticks and bars
        for a in ([arm] if arm else e.arms):
            v = e.tcp_pos(a) - p
            closest = p + np.clip(v @ ax, -seg, seg) * ax
            if np.linalg.norm((e.tcp_pos(a) - closest)[:2]) < dist and abs(v[2]) < 0.06:
                return True
        return False
    return f


def _grasped(role, arm=None):
    return lambda e: bool(e.grasped_by(e.layout.roles[role]) & ({arm} if arm else set(e.arms)))


def _lifted(role, height=0.03):
    def f(e):
        n = e.layout.roles[role]
        return e.obj_pos(n)[2] > e.objects_half(n)[2] + height and bool(e.grasped_by(n))
    return f


def _near(role, target_role, dist=0.06, lifted=True):
    def f(e):
        p, q = e.obj_pos(e.layout.roles[role]), e.obj_pos(e.layout.roles[target_role])
        return np.linalg.norm(p[:2] - q[:2]) < dist and (not lifted or bool(e.grasped_by(e.layout.roles[role])))
    return f


def _resting_on_pad(e, role, pad="pad", tol=0.03):
    n = e.layout.roles[role]
    p, q = e.obj_pos(n), e.obj_pos(e.layout.roles[pad])
    return np.linalg.norm(p[:2] - q[:2]) < tol and p[2] < e.objects_half(n)[2] + 0.01 and not e.touched_by_gripper(n)


def _on_top(e, upper, lower, tol=0.02):
    a, b = e.obj_pos(e.layout.roles[upper]), e.obj_pos(e.layout.roles[lower])
    return (np.linalg.norm(a[:2] - b[:2]) < tol and abs(a[2] - b[2] - 2 * BLOCK) < 0.01
            and not e.touched_by_gripper(e.layout.roles[upper]))


def _bar_lifted(e):
    p, ax = e.obj_pos("bar"), e.obj_axis("bar")
    return p[2] > BAR_HALF[2] + 0.05 and abs(ax[2]) < np.sin(0.2)


def _pick_place(role, place_pred, target_role):
    return [(f"reach_{role}", "motion", _reached(role)), (f"grasp_{role}", "motion", _grasped(role)),
            (f"lift_{role}", "skill", _lifted(role)), (f"transfer_{role}", "skill", _near(role, target_role)),
            (f"place_{role}", "skill", place_pred)]


STAGES = {
    "lift_block": [("reach", "motion", _reached("target")), ("grasp", "motion", _grasped("target")),
                   ("lift", "skill", lambda e: e.obj_pos(e.layout.roles["target"])[2] > BLOCK + 0.05
                    and bool(e.grasped_by(e.layout.roles["target"])))],
    "place_block": _pick_place("target", lambda e: _resting_on_pad(e, "target"), "pad"),
    "lift_bar": [("reach_both", "motion", lambda e: all(min(np.linalg.norm(e.tcp_pos(a) - e.obj_pos("bar") - s * 0.11 * e.obj_axis("bar"))
                                                                for s in (-1, 1)) < 0.05 for a in ARMS)),
                 ("grasp_both", "motion", lambda e: e.grasped_by("bar") == set(ARMS)),
                 ("lift", "skill", _bar_lifted)],
    "handover": [("reach", "motion", _reached("target", "right")), ("grasp_right", "motion", _grasped("target", "right")),
                 ("lift", "skill", _lifted("target")),
                 ("transfer", "skill", lambda e: abs(e.obj_pos(e.layout.roles["target"])[0]) < 0.08 and bool(e.grasped_by(e.layout.roles["target"]))),
                 ("grasp_left", "motion", _grasped("target", "left")),
                 ("release_right", "skill", lambda e: e.grasped_by(e.layout.roles["target"]) == {"left"}),
                 ("place", "skill", lambda e: _resting_on_pad(e, "target", tol=0.04))],
    "stack_two": _pick_place("block0", lambda e: _resting_on_pad(e, "block0", tol=0.04), "pad")
    + _pick_place("block1", lambda e: _on_top(e, "block1", "block0"), "block0"),
    "stack_three": _pick_place("block0", lambda e: _resting_on_pad(e, "block0", tol=0.04), "pad")
    + _pick_place("block1", lambda e: _on_top(e, "block1", "block0"), "block0")
    + _pick_place("block2", lambda e: _on_top(e, "block2", "block1"), "block1"),
}

# Success predicates: (condition now, consecutive steps it must hold). 20 steps = 1 s at 20 Hz.
SUCCESS = {
    "lift_block": lambda e: (e.obj_pos(e.layout.roles["target"])[2] > BLOCK + 0.05, 20),
    "place_block": lambda e: (_resting_on_pad(e, "target"), 10),
    "lift_bar": lambda e: (_bar_lifted(e), 20),
    "handover": lambda e: (_resting_on_pad(e, "target", tol=0.04), 10),
    "stack_two": lambda e: (_resting_on_pad(e, "block0", tol=0.04) and _on_top(e, "block1", "block0"), 10),
    "stack_three": lambda e: (_resting_on_pad(e, "block0", tol=0.04) and _on_top(e, "block1", "block0")
                              and _on_top(e, "block2", "block1"), 10),
}



# ============================================================================ inverse kinematics

def _rot_error(R_target, R):
    """World-frame rotation vector taking R to R_target (axis * angle)."""
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, (R_target @ R.T).ravel())
    if q[0] < 0:
        q = -q
    s = np.linalg.norm(q[1:])
    return np.zeros(3) if s < 1e-12 else q[1:] / s * 2 * np.arctan2(s, q[0])


def solve_ik(env, arm, pos, R, q0, iters=60, damping=1e-3):
    """Damped least squares on the arm's 6 joints for the tcp site pose, from q0 (warm start).

    Runs on a scratch MjData so the simulation is untouched. Returns joint angles within limits.
    """
    m = env.model
    if not hasattr(env, "_ik_data"):
        env._ik_data = mujoco.MjData(m)
    d = env._ik_data
    qadr, dadr, lo, hi = env.arm_qadr[arm], env.arm_dadr[arm], *env.jnt_range[arm].T
    q = np.array(q0, np.float64)
    jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
    for _ in range(iters):
        d.qpos[qadr] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        site = env.tcp[arm]
        err = np.r_[pos - d.site_xpos[site], 0.5 * _rot_error(R, d.site_xmat[site].reshape(3, 3))]
        if np.linalg.norm(err) < 1e-5:
            break
        mujoco.mj_jacSite(m, d, jacp, jacr, site)
        J = np.vstack([jacp[:, dadr], 0.5 * jacr[:, dadr]])
        dq = J.T @ np.linalg.solve(J @ J.T + damping * np.eye(6), err)
        q = np.clip(q + np.clip(dq, -0.3, 0.3), lo, hi)
    return q


def natural_finger_dir(arm, p):
    """Direction the fingers separate along when this arm reaches p top-down without rolling the wrist."""
    base = np.array([-0.42 if arm == "left" else 0.42, 0.0])
    v = p[:2] - base
    v = v / (np.linalg.norm(v) + 1e-9)
    return np.array([-v[1], v[0]])


def topdown_rot(u):
    """Gripper pointing down (hand x = -z), fingers separating along the horizontal unit vector u."""
    x, y = np.array([0.0, 0.0, -1.0]), np.array([u[0], u[1], 0.0])
    return np.column_stack([x, y, np.cross(x, y)])


def home_qpos(env) -> dict:
    """Ready pose: tcp 22 cm above the table, 20 cm in front of each base, pointing down."""
    out = {}
    for a in ARMS:
        p = np.array([-0.22 if a == "left" else 0.22, 0.0, 0.22])
        out[a] = solve_ik(env, a, p, topdown_rot(natural_finger_dir(a, p)), [0, -0.3, 0.9, 0, 1.0, 0], iters=300)
    return out


# ============================================================================ suites
# A suite is a module holding one robot's scene and tasks: ROBOT, TASKS, STAGES, Env, FPS, ACTION_NAMES,
# GRIPPER_INDICES, ARMS, CAMERAS. This module is the bimanual one; twin.py is the single-arm Franka twin.
# world.py finds a task's suite (this module or twin.py).
ROBOT = "bimanual_6dof"
# Its symmetry (train.py --symmetry): the arm bases face each other across the table centre, so the scene turned
# half a turn about it (objects at (-x, -y, yaw + pi)) is solved by a demonstration with the arms' joints and
# grippers exchanged (tests/test_sim.py). A state or action q becomes q[joint_index] * joint_sign + joint_offset;
# an object's world (x, y) is multiplied by xy_sign.
SYMMETRY = dict(xy_sign=(-1.0, -1.0), joint_index=(*range(7, 14), *range(7)), joint_sign=(1.0,) * 14,
                joint_offset=(0.0,) * 14)
