"""A MuJoCo twin of a single-arm Franka (FR3): scene, tasks, and the backend `eval_real.py --robot mujoco` drives.

The arm is built from primitives with the documented Craig DH kinematics (../shared/reference/franka.md; the
FK test in tests/test_twin.py checks the compiled model against the DH product), FR3 joint limits, position
servos and a parallel gripper of 0.08 m maximum width. It reuses sim.py's machinery (Env, layouts, progress
stages, success predicates, EVAL_SEED_OFFSET): this module only adds what differs for one 7-DoF arm.

Action (8-D, absolute): [joint1 .. joint7 (rad), gripper (1 = open, 0 = closed)];
qpos (8-D): the measured joints and the measured width / 0.08 -- the layout eval_real.py sends to and reads
from a real Franka ("Assumptions" in its docstring). Control at 20 Hz, physics at 2 ms (sim.FPS, sim.SUBSTEPS).
World frame: the arm's base at the origin on the table top (z = 0), facing +x; objects 0.42-0.68 m in front.

Twin choices (not Franka facts): link shapes and masses are rough capsules with gravity compensation (the
real arm compensates gravity too); joint servos are stiff (kp 4000 / 2000) so the arm tracks 20 Hz targets
within about 0.01 rad; the gripper's width changes at most GRIPPER_SPEED m/s, like a real hand's finite speed.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import world.sim as sim  # first: it sets MUJOCO_GL before mujoco is imported
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from robot.franka import ARMS as FRANKA_ARMS, GRIPPER_MAX_WIDTH, READY  # noqa: E402

# ============================================================================ Franka facts (franka.md)
DH_A = (0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088)  # m, Craig: a_{i-1}
DH_D = (0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0)  # m, d_i
DH_ALPHA = (0.0, -math.pi / 2, math.pi / 2, math.pi / 2, -math.pi / 2, math.pi / 2, math.pi / 2)  # alpha_{i-1}
FLANGE_D = 0.107  # m, link 7 -> flange along z
HAND_YAW = -math.pi / 4  # the hand is mounted on the flange rotated -45 deg about z
FINGER_OFFSET = 0.0584  # m, hand -> finger joints along the hand's z ("fingers about 0.058 m beyond the hand")
TCP_OFFSET = 0.1034  # m, hand -> between the fingertip pads
LIMITS = FRANKA_ARMS["fr3"]  # FR3, system >= 5.9
GRIPPER_SPEED = 0.1  # m/s of width (twin choice: a full open or close takes 0.8 s)

ROBOT = "franka"
FPS = sim.FPS
ARMS = ("arm",)
JOINTS = tuple(f"joint{i}" for i in range(1, 8))
ACTION_NAMES = [*JOINTS, "gripper"]
GRIPPER_INDICES = [7]
CAMERAS = ("front", "wrist")
EVAL_SEED_OFFSET = sim.EVAL_SEED_OFFSET
# servo gains (kp N m/rad, kv N m s/rad) and torque limits (N m: Franka's 87 / 12)
GAINS = [(4000, 100)] * 4 + [(2000, 20)] * 3
TORQUE = [87.0] * 4 + [12.0] * 3
REGION = (0.42, 0.68, -0.2, 0.2)  # x, y range of object centres (m)
# Its symmetry (train.py --symmetry; the fields as sim.SYMMETRY): the scene mirrored in the base's x-z plane
# (objects at (x, -y, -yaw); REGION is symmetric in y) is solved by the demonstration with joints 1, 3, 5 and 7
# reflected, whose limits are symmetric; joint 7 about READY's pi/4, so that the ready pose maps onto itself
# (the hand sits at -45 deg on the flange; a block can be pinched across either pair of faces) (tests/test_twin.py).
SYMMETRY = dict(xy_sign=(1.0, -1.0), joint_index=tuple(range(8)), joint_sign=(-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0),
                joint_offset=(0.0,) * 6 + (2 * float(READY[6]), 0.0))
PAD_HALF = (0.05, 0.05, 0.001)
BIN_HALF = (0.07, 0.07, 0.025)  # outer half sizes of the open box ("bin"); walls 8 mm thick
BIN_WALL = 0.008


def dh_transform(a, d, alpha, theta) -> np.ndarray:
    """Craig (modified) DH: RotX(alpha) TransX(a) RotZ(theta) TransZ(d), as a 4x4 matrix."""
    ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
    return np.array([[ct, -st, 0, a], [st * ca, ct * ca, -sa, -d * sa], [st * sa, ct * sa, ca, d * ca], [0, 0, 0, 1]])


# ============================================================================ scene

def _v(x) -> str:
    return " ".join(f"{float(t):.6g}" for t in x)


def _look_at(pos, target) -> str:
    """MuJoCo camera xyaxes for a camera at pos looking at target with +z up."""
    f = np.subtract(target, pos) / np.linalg.norm(np.subtract(target, pos))
    x = np.cross(f, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    return _v(np.r_[x, np.cross(-f, x)])


def arm_xml() -> str:
    """The kinematic chain from the DH table: body i's frame is Craig frame i, its joint turns about its z."""
    xml, close = ['<body name="link0" pos="0 0 0" gravcomp="1">',
                  '<geom class="link" type="cylinder" size="0.07 0.1" pos="0 0 0.1" rgba="0.9 0.9 0.92 1"/>'], ["</body>"]
    for i in range(7):
        a, d, al = DH_A[i], DH_D[i], DH_ALPHA[i]
        pos = (a, -math.sin(al) * d, math.cos(al) * d)  # TransX(a) RotX(alpha) TransZ(d), rotation in quat
        lo, hi = LIMITS.q_min[i], LIMITS.q_max[i]
        xml += [f'<body name="link{i + 1}" pos="{_v(pos)}" quat="{_v((math.cos(al / 2), math.sin(al / 2), 0, 0))}" gravcomp="1">',
                f'<joint name="{JOINTS[i]}" axis="0 0 1" range="{lo} {hi}"/>']
        # a capsule to the next frame's origin (expressed in this frame); a sphere where the frames coincide
        nxt = (0, 0, FLANGE_D) if i == 6 else (DH_A[i + 1], -math.sin(DH_ALPHA[i + 1]) * DH_D[i + 1],
                                                  math.cos(DH_ALPHA[i + 1]) * DH_D[i + 1])
        shade = "0.9 0.9 0.92 1" if i % 2 == 0 else "0.75 0.75 0.78 1"
        if i == 0:
            xml.append(f'<geom class="link" type="capsule" fromto="0 0 -0.13 0 0 0" size="0.06" rgba="{shade}"/>')
        if np.linalg.norm(nxt) > 1e-6:
            xml.append(f'<geom class="link" type="capsule" fromto="0 0 0 {_v(nxt)}" size="{0.055 if i < 4 else 0.045}" rgba="{shade}"/>')
        else:
            xml.append(f'<geom class="link" type="sphere" size="0.06" rgba="{shade}"/>')
        close.append("</body>")
    # flange (the DH end frame) and the hand, rotated -45 deg about the flange's z
    cam_pos = np.array([-0.07, 0.0, 0.03])  # behind the fingers (on the base's side at the ready pose)
    f = np.array([0.0, 0.0, TCP_OFFSET + 0.06]) - cam_pos  # look just past the fingertips
    f /= np.linalg.norm(f)
    cam_x = np.array([0.0, 1.0, 0.0])  # image up = ahead of the hand
    xml += [f'<site name="flange" pos="0 0 {FLANGE_D}" size="0.005" rgba="1 0 0 0"/>',
            f'<body name="hand" pos="0 0 {FLANGE_D}" quat="{_v((math.cos(HAND_YAW / 2), 0, 0, math.sin(HAND_YAW / 2)))}" gravcomp="1">',
            '<site name="hand" size="0.005" rgba="0 1 0 0"/>',
            '<geom class="link" type="box" size="0.025 0.1 0.03" pos="0 0 0.03" rgba="0.9 0.9 0.92 1"/>',
            # tcp frame: x along the fingers (approach), y along finger separation (sim.topdown_rot's convention)
            f'<site name="arm_tcp" pos="0 0 {TCP_OFFSET}" quat="0.7071068 0 -0.7071068 0" size="0.005" rgba="1 1 0 0"/>',
            f'<camera name="wrist" pos="{_v(cam_pos)}" xyaxes="{_v(np.r_[cam_x, np.cross(-f, cam_x)])}" fovy="80"/>']
    for f_name, s in (("a", 1), ("b", -1)):
        xml += [f'<body name="finger_{f_name}" pos="0 0 {FINGER_OFFSET}" gravcomp="1">',
                f'<joint name="finger_{f_name}" class="finger" axis="0 {s} 0"/>',
                f'<geom class="link" type="box" size="0.01 0.006 0.015" pos="0 {s * 0.006} 0.012" rgba="0.2 0.2 0.2 1"/>',
                f'<geom name="pad_{f_name}" class="pad" type="box" size="0.01 0.006 0.018" pos="0 {s * 0.006} {TCP_OFFSET - FINGER_OFFSET}"/>',
                "</body>"]
    xml.append("</body>")  # hand
    return "\n".join(xml + close[::-1])


@dataclass
class FObj(sim.Obj):
    """A twin object: sim's blocks, bigger pads, and 'bin' (an open box, fixed to the table)."""

    @property
    def half(self):
        return {"pad": PAD_HALF, "bin": BIN_HALF}.get(self.kind) or sim.Obj.half.fget(self)


def _bin_xml(o: FObj) -> str:
    h, w, t = BIN_HALF[0], BIN_HALF[2], BIN_WALL / 2
    rgba = "0.55 0.35 0.2 1"
    walls = [(0, 0, t, h, h, t)] + [(sx * (h - t), sy * (h - t), w, hx, hy, w) for sx, sy, hx, hy in
                                     ((1, 0, t, h), (-1, 0, t, h), (0, 1, h, t), (0, -1, h, t))]
    geoms = [f'<geom {"name=" + chr(34) + o.name + chr(34) if k == 0 else ""} class="object" type="box" '
             f'pos="{_v(g[:3])}" size="{_v(g[3:])}" rgba="{rgba}"/>' for k, g in enumerate(walls)]
    return f'<body name="{o.name}" pos="0 0 0">' + "".join(geoms) + "</body>"


def build_model(objects) -> mujoco.MjModel:
    xml = (sim.ASSETS / "franka.xml").read_text()
    front = np.array([1.05, 0.0, 0.75])  # facing the arm across the table, seeing the workspace and the hand
    xml = xml.replace("FRONT_CAMERA", f'<camera name="front" pos="{_v(front)}" xyaxes="{_look_at(front, [0.38, 0, 0.12])}" fovy="48"/>')
    xml = xml.replace("ARM", arm_xml())
    xml = xml.replace("OBJECTS", "\n".join(_bin_xml(o) if o.kind == "bin" else sim._object_xml(o) for o in objects))
    acts = [f'<position name="{j}" joint="{j}" kp="{kp}" kv="{kv}" ctrlrange="{lo} {hi}" forcerange="{-f} {f}"/>'
            for j, (kp, kv), lo, hi, f in zip(JOINTS, GAINS, LIMITS.q_min, LIMITS.q_max, TORQUE)]
    acts.append(f'<position name="gripper" tendon="grip" kp="{sim.GRIP_KP}" kv="5" ctrlrange="0 0.04" forcerange="-20 20"/>')
    return mujoco.MjModel.from_xml_string(xml.replace("ACTUATORS", "\n".join(acts)))


# ============================================================================ tasks

class FrankaTask(sim.Task):
    def objects(self):
        return TASK_OBJECTS[self.name]()

    def layout(self, seed: int) -> sim.Layout:
        rng = np.random.default_rng([zlib.crc32(self.name.encode()), int(seed)])  # as sim.Task.layout
        return TASK_LAYOUTS[self.name](self, rng)


def _blocks(*colors):
    return [FObj(f"block_{c}", "block", c) for c in colors]


def _sample(rng, n, min_dist=0.1, first_min_dist=None):
    """n non-overlapping (x, y, yaw) in REGION; the first keeps first_min_dist from the others (a bin)."""
    fd = first_min_dist or min_dist
    for _ in range(1000):
        pts = rng.uniform(REGION[0::2], REGION[1::2], size=(n, 2))
        ok = all(np.linalg.norm(pts[i] - pts[j]) >= (fd if i == 0 else min_dist) for i in range(n) for j in range(i + 1, n))
        if ok:
            return [(float(x), float(y), float(rng.uniform(-np.pi / 4, np.pi / 4))) for x, y in pts]
    raise RuntimeError("could not place objects without overlap")


def _layout_pick_place(task, rng):
    colors = list(rng.permutation(list(sim.COLORS)))[:2]  # the named block and one distractor
    poses = _sample(rng, 3, min_dist=0.11)
    names = [f"block_{c}" for c in colors] + ["pad_white"]
    p = dict(zip(names, poses))
    return sim.Layout(p, sim._phrase(task, rng, color=colors[0]), {"target": names[0], "pad": "pad_white"},
                      {names[0]: "arm"})


def _layout_stack(task, rng):
    colors = list(rng.permutation(list(sim.COLORS)))[:3]  # base, top, distractor
    names = [f"block_{c}" for c in colors]
    p = dict(zip(names, _sample(rng, 3, min_dist=0.1)))
    return sim.Layout(p, sim._phrase(task, rng, c0=colors[0], c1=colors[1]),
                      {"block0": names[0], "block1": names[1]}, {names[1]: "arm"})


def _layout_bin(task, rng):
    colors = list(rng.permutation(list(sim.COLORS)))[:2]
    poses = _sample(rng, 3, min_dist=0.1, first_min_dist=0.17)  # bin first: keep fingers off its walls
    names = ["bin", *(f"block_{c}" for c in colors)]
    p = dict(zip(names, poses))
    return sim.Layout(p, sim._phrase(task, rng, color=colors[0]), {"target": names[1], "bin": "bin"}, {names[1]: "arm"})


def _in_bin(e, role="target"):
    """The block's centre inside the bin's inner walls (in the bin's frame), below the rim, released."""
    n = e.layout.roles[role]
    b = e.layout.roles["bin"]
    R = e.data.xmat[e.obj_body[b]].reshape(3, 3)
    local = R.T @ (e.obj_pos(n) - e.obj_pos(b))
    inner = BIN_HALF[0] - BIN_WALL - sim.BLOCK + 0.01
    return bool(np.abs(local[:2]).max() < inner and local[2] < 2 * BIN_HALF[2] and not e.touched_by_gripper(n))


TASK_OBJECTS = {
    "franka_pick_place": lambda: _blocks(*sim.COLORS) + [FObj("pad_white", "pad", "white")],
    "franka_stack": lambda: _blocks(*sim.COLORS),
    "franka_put_in_bin": lambda: [FObj("bin", "bin", "orange")] + _blocks(*sim.COLORS),
}
TASK_LAYOUTS = {"franka_pick_place": _layout_pick_place, "franka_stack": _layout_stack, "franka_put_in_bin": _layout_bin}
TASKS = {t.name: t for t in [
    FrankaTask("franka_pick_place", 2, ARMS, False, 400,  # step limits: about 1.5x the expert's longest
               ("put the {color} block on the pad", "place the {color} cube onto the white pad",
                "move the {color} block to the pad"),
               "Two blocks and a white pad; put the named block on the pad (within 5 cm of its centre)."),
    FrankaTask("franka_stack", 2, ARMS, False, 360,
               ("stack the {c1} block on the {c0} block", "put the {c1} cube on top of the {c0} cube",
                "place {c1} onto {c0}"),
               "Three blocks; stack the named one on the other named one (within 2 cm)."),
    FrankaTask("franka_put_in_bin", 2, ARMS, False, 400,
               ("put the {color} block in the bin", "drop the {color} cube into the box",
                "place the {color} block inside the container"),
               "Two blocks and an open box; put the named block into the box."),
]}
STAGES = {
    "franka_pick_place": sim._pick_place("target", lambda e: sim._resting_on_pad(e, "target", tol=0.05), "pad"),
    "franka_stack": sim._pick_place("block1", lambda e: sim._on_top(e, "block1", "block0"), "block0"),
    "franka_put_in_bin": sim._pick_place("target", _in_bin, "bin"),
}
SUCCESS = {  # (condition now, consecutive steps): 10 steps = 0.5 s at 20 Hz
    "franka_pick_place": lambda e: (sim._resting_on_pad(e, "target", tol=0.05), 10),
    "franka_stack": lambda e: (sim._on_top(e, "block1", "block0"), 10),
    "franka_put_in_bin": lambda e: (_in_bin(e), 10),
}


# ============================================================================ environment

class FrankaEnv(sim.Env):
    """sim.Env for the twin: reset / step / observe / stages / success come from sim.Env unchanged.

    obs = {"images": {camera: (H, W, 3) uint8}, "qpos": (8,) float32, "instruction": str}
    """

    arms = ARMS

    def __init__(self, task: str, cameras=CAMERAS, image_size=(96, 96), render=True):
        if task not in TASKS:
            raise ValueError(f"unknown twin task '{task}'; twin tasks: {', '.join(TASKS)}")
        bad = [c for c in cameras if c not in CAMERAS]
        if bad:
            raise ValueError(f"unknown camera(s) {bad}; the twin's cameras: {', '.join(CAMERAS)}")
        self.task = TASKS[task]
        self.objects = self.task.objects()
        m = self.model = build_model(self.objects)
        self.data, self._ik_data = mujoco.MjData(m), mujoco.MjData(m)
        self.cameras, self.image_size = tuple(cameras), tuple(image_size)
        self.renderer = mujoco.Renderer(m, *self.image_size) if render and self.cameras else None
        jid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)  # noqa: E731
        self.arm_qadr = {"arm": np.array([m.jnt_qposadr[jid(j)] for j in JOINTS])}
        self.arm_dadr = {"arm": np.array([m.jnt_dofadr[jid(j)] for j in JOINTS])}
        self.finger_qadr = {"arm": [m.jnt_qposadr[jid(f"finger_{f}")] for f in "ab"]}
        self.jnt_range = {"arm": m.jnt_range[[jid(j) for j in JOINTS]]}
        self.tcp = {"arm": mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "arm_tcp")}
        self.pad_geoms = {"arm": {mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"pad_{f}") for f in "ab"}}
        self.obj_geom = {o.name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, o.name) for o in self.objects}
        self.obj_body = {o.name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, o.name) for o in self.objects}
        self.obj_qadr = {o.name: m.jnt_qposadr[jid(o.name)] for o in self.objects if o.kind == "block"}
        self.home = {"arm": READY.copy()}
        self.stages, self.success_fn = STAGES[task], SUCCESS[task]

    def reset(self, seed: int) -> dict:
        obs = super().reset(seed)
        self.grip_target = self.grip_ctrl = 0.04  # per finger, m (open)
        self.data.ctrl[7] = self.grip_ctrl
        return obs

    def home_action(self) -> np.ndarray:
        return np.r_[READY, 1.0].astype(np.float32)

    def apply(self, action) -> None:
        """One control step: joint targets (clamped to the limits) and a gripper target reached at GRIPPER_SPEED."""
        action = np.asarray(action, np.float64)
        if action.shape != (8,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 8 finite numbers (7 joints + gripper), got shape {action.shape}")
        self.data.ctrl[:7] = np.clip(action[:7], LIMITS.q_min, LIMITS.q_max)
        self.grip_target = float(np.clip(action[7], 0, 1)) * GRIPPER_MAX_WIDTH / 2
        dmax = GRIPPER_SPEED / 2 / FPS  # per finger per control step
        self.grip_ctrl += float(np.clip(self.grip_target - self.grip_ctrl, -dmax, dmax))
        self.data.ctrl[7] = self.grip_ctrl
        mujoco.mj_step(self.model, self.data, nstep=sim.SUBSTEPS)
        self.t += 1
        self._update_progress()

    def qpos(self) -> np.ndarray:
        width = self.data.qpos[self.finger_qadr["arm"]].sum() / GRIPPER_MAX_WIDTH
        return np.r_[self.data.qpos[self.arm_qadr["arm"]], np.clip(width, 0, 1)].astype(np.float32)

    def finger_dir(self, arm, p) -> np.ndarray:
        """Fingers across the radial direction from the base: the hand's roll at the ready pose (tcp y = world
        -y there), turned with joint 1 to face p."""
        v = np.asarray(p[:2], float) / (np.linalg.norm(p[:2]) + 1e-9)
        return np.array([v[1], -v[0]])


Env = FrankaEnv


def make_meta(tasks, cameras, image_size, fps=FPS) -> dict:
    """meta.json for Franka-layout episodes (twin or real arm); tasks unknown to the twin get 2 events."""
    return {"format_version": 1, "robot": ROBOT, "fps": fps, "action_names": ACTION_NAMES, "qpos_names": ACTION_NAMES,
            "gripper_indices": GRIPPER_INDICES,
            "gripper_convention": "normalised opening: 1 = open, 0 = closed (action: commanded; qpos: measured width / 0.08)",
            "arms": list(ARMS), "cameras": list(cameras), "image_size": list(image_size),
            "tasks": {t: ({"gripper_events": TASKS[t].gripper_events, "arms": list(ARMS), "both_arms": False,
                           "max_steps": TASKS[t].max_steps, "description": TASKS[t].description} if t in TASKS
                          else {"gripper_events": 2, "arms": list(ARMS), "both_arms": False}) for t in tasks}}


# ============================================================================ eval_real.py --robot mujoco

DT = 1.0 / FPS  # s, one control step of physics


class TwinBackend:
    """eval_real.py's backend interface (read_state, send_chunk, set_gripper, stop, close) on the twin.

    Its clock is simulated: physics advances only in sleep(), by the time asked for, in whole control steps.
    eval_real.run_episode keeps its deadlines with clock() / sleep() as on the real arm, so the same loop,
    limits and caps run as fast as the CPU allows (policy inference takes no simulated time). A chunk sent at
    time t0 holds target k during [t0 + k dt, t0 + (k+1) dt), as the demonstrations' env.step did; the
    commanded joints move at most --dynamics x the joint speed limits (franky's relative_dynamics_factor).
    """

    gripper_stroke_s = GRIPPER_MAX_WIDTH / GRIPPER_SPEED  # s, a full open or close (the gate's cooldown floor)

    def __init__(self, task, cameras=CAMERAS, image_size=(96, 96), dynamics=0.2, arm="fr3", workspace=None):
        self.env = FrankaEnv(task, cameras, image_size)
        self.v_max = dynamics * np.asarray(FRANKA_ARMS[arm].dq_max)  # rad/s
        self.now = 0.0
        self.workspace = workspace  # robot.franka.Workspace: a chunk leaving it is refused, as on the real arm

    def reset(self, seed: int) -> dict:
        obs = self.env.reset(seed)
        self.debt, self.chunk, self.grip = 0.0, None, 1.0
        self.ctrl = self.env.data.ctrl[:7].copy()  # the commanded joints (rad)
        return obs

    # -- the simulated clock
    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.debt += max(0.0, float(seconds))
        while self.debt > DT - 1e-9:
            self.debt -= DT
            goal = self.ctrl
            if self.chunk is not None:
                t0, targets, dt = self.chunk
                goal = targets[min(int((self.now - t0) / dt + 1e-9), len(targets) - 1)]
            step = self.v_max * DT
            self.ctrl = self.ctrl + np.clip(goal - self.ctrl, -step, step)
            self.env.apply(np.r_[self.ctrl, self.grip])
            self.now += DT

    # -- the backend interface
    def read_state(self):
        q = self.env.qpos()
        return q[:7].astype(float), float(q[7])

    def send_chunk(self, targets, dt):
        targets = np.asarray(targets, float)
        if targets.ndim != 2 or targets.shape[1] != 7 or not np.isfinite(targets).all():
            raise ValueError(f"send_chunk needs (n, 7) finite joint targets, got {targets.shape}")
        if self.workspace is not None and self.workspace.first_outside(targets) < len(targets):
            raise ValueError("send_chunk: a target leaves the workspace box (eval_real.run_episode cuts it first)")
        self.chunk = (self.now, targets, float(dt))

    def motion_finished(self) -> bool:
        """Whether the commanded joints have reached the last target sent (eval_real.settle waits for it)."""
        return self.chunk is None or bool(np.abs(self.chunk[1][-1] - self.ctrl).max() < 1e-9)

    def set_gripper(self, closed: bool):
        self.grip = 0.0 if closed else 1.0

    def stop(self):
        self.chunk, self.ctrl = None, self.env.qpos()[:7].astype(float)  # hold where the arm is

    def close(self):
        pass


class TwinCamera:
    """eval_real's camera interface: read() renders the twin's camera now."""

    def __init__(self, env, name):
        self.env, self.name = env, name

    def read(self) -> np.ndarray:
        return self.env.render(self.name)

    def close(self):
        pass


def eval_seeds(seed: int, n: int) -> list:
    """The same evaluation seeds as eval_sim.py: disjoint from demonstration seeds (below EVAL_SEED_OFFSET)."""
    return [EVAL_SEED_OFFSET + seed * 100_000 + i for i in range(n)]
