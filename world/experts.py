"""Scripted experts for the task suite in sim.py: waypoint plans in end-effector space, solved to joint
targets by damped least-squares IK (sim.solve_ik) every control step.

Used by data.py (demonstrations), the tests, and as a stand-in for a human on the robot path.
"""
from __future__ import annotations

import mujoco
import numpy as np

from world.sim import ARMS, BLOCK, FPS, Env, solve_ik, topdown_rot

# ============================================================================ scripted experts
# Plans are generators of actions in end-effector space: each move interpolates the tcp pose (min-jerk
# position, slerp orientation) and solves IK every control step. Targets are read from the live state at
# the start of each move, so plans adapt to where objects actually are. Gripper commands are steps between
# 1 (open) and 0 (closed): clean events. The recorded action is the joint target, not the pose.

def _slerp(q0, q1, s):
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    th = np.arccos(d)
    return (np.sin((1 - s) * th) * q0 + np.sin(s * th) * q1) / np.sin(th)


def _quat(R):
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, R.ravel())
    return q


def _mat(q):
    R = np.empty(9)
    mujoco.mju_quat2Mat(R, q)
    return R.reshape(3, 3)


class Expert:
    """Scripted expert for env's task; iterate `actions()` while stepping the env with each action."""

    SPEED = 0.35  # m/s for free-space moves
    MIN_STEPS, MAX_STEPS = 8, 40  # bounds on a free-space move's duration (control steps)
    JOINT_SPEED = None  # rad/s: if set, moves last long enough that no joint's peak speed exceeds it
    GRASP_WAIT, RELEASE_WAIT = 8, 6  # control steps the gripper gets to close / open
    # A block may be pinched across either pair of faces; True picks the pair nearest the arm's natural finger
    # direction (so the wrist turns with the block's yaw), False keeps the natural direction whatever the yaw
    # (data.py --grasp-natural: all a policy that sees positions but no yaw can predict).
    GRASP_YAW = True

    def __init__(self, env: Env):
        self.e = env
        self.q = {a: env.home[a].copy() for a in env.arms}
        self.grip = {a: 1.0 for a in env.arms}
        self.pose = {}
        for a in env.arms:  # the commanded pose starts at the home pose
            d = env._ik_data
            d.qpos[env.arm_qadr[a]] = self.q[a]
            mujoco.mj_kinematics(env.model, d)
            self.pose[a] = (d.site_xpos[env.tcp[a]].copy(), d.site_xmat[env.tcp[a]].reshape(3, 3).copy())

    def action(self):
        return np.concatenate([np.r_[self.q[a], self.grip[a]] for a in self.e.arms]).astype(np.float32)

    def actions(self):
        yield from PLANS[self.e.task.name](self)

    # -- primitives
    def move(self, targets: dict, steps=None, grip: dict | None = None):
        """Move arms to {arm: (pos, R)} over `steps` control steps (default: from distance and SPEED)."""
        starts = {a: self.pose[a] for a in targets}
        if steps is None:
            dist = max(np.linalg.norm(targets[a][0] - starts[a][0]) for a in targets) if targets else 0
            steps = int(np.clip(np.ceil(dist / self.SPEED * FPS), self.MIN_STEPS, self.MAX_STEPS))
        steps = max(steps, self.joint_steps(targets))
        self.grip.update(grip or {})
        for k in range(1, steps + 1):
            s = self.profile(k / steps)
            for a, (p1, R1) in targets.items():
                p0, R0 = starts[a]
                p = p0 + s * (p1 - p0)
                R = _mat(_slerp(_quat(R0), _quat(R1), s))
                self.q[a] = solve_ik(self.e, a, p, R, self.q[a], iters=20)
                self.pose[a] = (p, R)
            yield self.action()

    PEAK = 1.875  # the profile's peak speed over its mean speed

    @staticmethod
    def profile(s):
        return s * s * s * (10 - 15 * s + 6 * s * s)  # min-jerk: 0 -> 1 over s in [0, 1]

    def joint_steps(self, targets) -> int:
        """Steps a move needs so that the fastest joint, on the move's profile (peak speed PEAK x the mean),
        stays under JOINT_SPEED; 0 when there is no joint-speed limit."""
        if self.JOINT_SPEED is None:
            return 0
        dq = 0.0
        for a, (p1, R1) in targets.items():  # follow the path in 10 pieces: IK far away may pick another posture
            p0, R0 = self.pose[a]
            q = self.q[a]
            for s in np.linspace(0.1, 1.0, 10):
                q_next = solve_ik(self.e, a, p0 + s * (p1 - p0), _mat(_slerp(_quat(R0), _quat(R1), s)), q, iters=20)
                dq, q = max(dq, 10 * np.abs(q_next - q).max()), q_next  # mean joint speed x move time
        return int(np.ceil(self.PEAK * dq * FPS / self.JOINT_SPEED))

    def wait(self, steps, grip: dict | None = None):
        self.grip.update(grip or {})
        for _ in range(steps):
            yield self.action()

    def grasp_rot(self, arm, name):
        e, p = self.e, self.e.obj_pos(name)
        nat = e.finger_dir(arm, p)
        obj = next(o for o in e.objects if o.name == name)
        yaw = e.obj_yaw(name)
        if obj.kind == "block":  # any of the four faces: pick the one nearest the natural wrist roll
            if not self.GRASP_YAW:  # --grasp-natural: the natural roll itself, whatever the yaw
                return topdown_rot(nat)
            cands = [np.array([np.cos(yaw + k * np.pi / 2), np.sin(yaw + k * np.pi / 2)]) for k in range(4)]
        else:  # long objects are pinched across their width
            cands = [s * np.array([-np.sin(yaw), np.cos(yaw)]) for s in (1, -1)]
        return topdown_rot(max(cands, key=lambda u: float(u @ nat)))

    def pick(self, arm, name, along=0.0, lift=0.10):
        """Approach from above, descend, close, lift. `along`: grasp offset along the object's long axis."""
        p = self.e.obj_pos(name) + along * self.e.obj_axis(name)
        R = self.grasp_rot(arm, name)
        yield from self.move({arm: (p + [0, 0, 0.10], R)})
        yield from self.move({arm: (p + [0, 0, 0.002], R)}, steps=10)
        yield from self.wait(self.GRASP_WAIT, grip={arm: 0.0})
        yield from self.move({arm: (p + [0, 0, lift], R)}, steps=10)

    def place(self, arm, name, target_xy, support_z):
        """Carry the held object over target_xy and release it resting on a surface at height support_z."""
        e = self.e
        offset = self.pose[arm][0] - e.obj_pos(name)  # where the object sits in the grasp right now
        z = support_z + e.objects_half(name)[2] + 0.004
        R = self.pose[arm][1]
        goal = np.r_[target_xy, z] + offset
        yield from self.move({arm: (goal + [0, 0, 0.08], R)})
        yield from self.move({arm: (goal, R)}, steps=10)
        yield from self.wait(self.RELEASE_WAIT, grip={arm: 1.0})
        yield from self.move({arm: (goal + [0, 0, 0.08], R)}, steps=8)

    def go_home(self, arms):
        targets = {}
        for a in arms:
            d = self.e._ik_data
            d.qpos[self.e.arm_qadr[a]] = self.e.home[a]
            mujoco.mj_kinematics(self.e.model, d)
            targets[a] = (d.site_xpos[self.e.tcp[a]].copy(), d.site_xmat[self.e.tcp[a]].reshape(3, 3).copy())
        yield from self.move(targets)


def _plan_lift(x: Expert):
    n = x.e.layout.roles["target"]
    arm = x.e.layout.arm_for[n]
    yield from x.pick(arm, n, lift=0.12)
    yield from x.wait(30)


def _plan_place(x: Expert):
    e = x.e
    n, pad = e.layout.roles["target"], e.layout.roles["pad"]
    arm = e.layout.arm_for[n]
    yield from x.pick(arm, n)
    yield from x.place(arm, n, e.obj_pos(pad)[:2], 0.0)
    yield from x.go_home([arm])
    yield from x.wait(12)


def _plan_lift_bar(x: Expert):
    e = x.e
    c, ax = e.obj_pos("bar"), e.obj_axis("bar")
    ax = ax if ax[0] > 0 else -ax  # +ax points to the right arm
    grasp = {"left": c - 0.11 * ax, "right": c + 0.11 * ax}
    R = {a: x.grasp_rot(a, "bar") for a in ARMS}
    yield from x.move({a: (grasp[a] + [0, 0, 0.10], R[a]) for a in ARMS})
    yield from x.move({a: (grasp[a] + [0, 0, 0.002], R[a]) for a in ARMS}, steps=10)
    yield from x.wait(8, grip={"left": 0.0, "right": 0.0})
    yield from x.move({a: (grasp[a] + [0, 0, 0.11], R[a]) for a in ARMS}, steps=16)
    yield from x.wait(30)


def _plan_handover(x: Expert):
    e = x.e
    n, pad = e.layout.roles["target"], e.layout.roles["pad"]
    ax = e.obj_axis(n)
    ax = ax if ax[0] > 0 else -ax
    yield from x.pick("right", n, along=0.05 * (1 if e.obj_axis(n)[0] > 0 else -1), lift=0.12)
    # carry so that the stick's centre is over the table centre, 18 cm up
    offset = x.pose["right"][0] - e.obj_pos(n)
    yield from x.move({"right": (np.array([0.0, 0.0, 0.18]) + offset, x.pose["right"][1])})
    yield from x.wait(4)
    ax = e.obj_axis(n)
    ax = ax if ax[0] > 0 else -ax
    g = e.obj_pos(n) - 0.05 * ax
    R = x.grasp_rot("left", n)
    yield from x.move({"left": (g + [0, 0, 0.08], R)})
    yield from x.move({"left": (g + [0, 0, 0.002], R)}, steps=10)
    yield from x.wait(8, grip={"left": 0.0})
    yield from x.wait(6, grip={"right": 1.0})
    p, Rr = x.pose["right"]
    yield from x.move({"right": (p + [0.05, 0, 0.06], Rr)}, steps=8)
    home = x.go_home(["right"])
    yield from home
    yield from x.place("left", n, e.obj_pos(pad)[:2], 0.0)
    yield from x.go_home(["left"])
    yield from x.wait(12)


def _plan_stack(x: Expert, n_blocks):
    e = x.e
    for i in range(n_blocks):
        n = e.layout.roles[f"block{i}"]
        arm = e.layout.arm_for[n]
        yield from x.pick(arm, n, lift=0.06 + 0.04 * i)
        if i == 0:
            yield from x.place(arm, n, e.obj_pos(e.layout.roles["pad"])[:2], 0.0)
        else:
            below = e.layout.roles[f"block{i - 1}"]
            yield from x.place(arm, n, e.obj_pos(below)[:2], e.obj_pos(below)[2] + BLOCK)
        yield from x.go_home([arm])
    yield from x.wait(12)


PLANS = {"lift_block": _plan_lift, "place_block": _plan_place, "lift_bar": _plan_lift_bar,
         "handover": _plan_handover, "stack_two": lambda x: _plan_stack(x, 2),
         "stack_three": lambda x: _plan_stack(x, 3)}


# ============================================================================ the Franka twin (twin.py)

class FrankaExpert(Expert):
    """The same primitives on the 7-DoF twin, slower: every joint's peak speed stays under 0.45 rad/s, so
    the demonstrations fit eval_real.py's default per-step cap (0.5 rad/s) with margin for servo lag."""

    SPEED = 0.2
    MAX_STEPS = 60
    JOINT_SPEED = 0.45
    GRASP_WAIT, RELEASE_WAIT = 12, 10  # the twin's gripper moves at 0.1 m/s
    RAMP = 0.2  # trapezoidal speed profile: accelerate over the first 20% of a move, brake over the last 20%
    PEAK = 1 / (1 - RAMP)

    @classmethod
    def profile(cls, s):
        r, v = cls.RAMP, cls.PEAK
        if s < r:
            return 0.5 * v / r * s * s
        if s > 1 - r:
            return 1 - 0.5 * v / r * (1 - s) ** 2
        return v * (s - r / 2)

    def actions(self):
        yield from FRANKA_PLANS[self.e.task.name](self)


def _plan_franka_pick_place(x: Expert):
    e = x.e
    n = e.layout.roles["target"]
    yield from x.pick("arm", n)
    yield from x.place("arm", n, e.obj_pos(e.layout.roles["pad"])[:2], 0.0)
    yield from x.wait(12)  # no return home: the task is done once the block rests, released


def _plan_franka_stack(x: Expert):
    e = x.e
    top, base = e.layout.roles["block1"], e.layout.roles["block0"]
    yield from x.pick("arm", top)
    yield from x.place("arm", top, e.obj_pos(base)[:2], e.obj_pos(base)[2] + BLOCK)
    yield from x.wait(12)


def _plan_franka_bin(x: Expert):
    from world import twin
    e = x.e
    n, b = e.layout.roles["target"], e.layout.roles["bin"]
    yield from x.pick("arm", n, lift=0.12)
    yield from x.place("arm", n, e.obj_pos(b)[:2], 2 * twin.BIN_HALF[2] + 0.01)  # released 1 cm above the rim
    yield from x.wait(12)


FRANKA_PLANS = {"franka_pick_place": _plan_franka_pick_place, "franka_stack": _plan_franka_stack,
                "franka_put_in_bin": _plan_franka_bin}


# ============================================================================ acting from any state
# The plans above are fixed at the start of each move and always begin at home: they cannot finish a task from
# where a policy (or a push) left it. `closed_loop` replans after every primitive (at most about 2 s) from the live
# state: what each arm pinches (env.grasped_by), what is already in place (the task's own "place_*" stage
# predicates), and where the arms are. Its primitives are the plans': pick, place, home, plus `clear` (open, rise
# out of the way). lab/dagger.py has it take over a policy's rollouts, to teach recovery.

PLACEMENTS = {  # task -> (role to place, role it goes onto), in order; each is done when the stage place_ROLE holds
    "place_block": (("target", "pad"),), "franka_pick_place": (("target", "pad"),),
    "franka_put_in_bin": (("target", "bin"),), "franka_stack": (("block1", "block0"),),
    "stack_two": (("block0", "pad"), ("block1", "block0")),
    "stack_three": (("block0", "pad"), ("block1", "block0"), ("block2", "block1")),
}
CLEAR_Z = 0.10  # m above the table: an arm that is about to cross the table rises to this first


def sync(x: Expert):
    """Start x from the arms' measured joints (not home); each gripper closed only if it pinches something."""
    e, d = x.e, x.e._ik_data
    for a in e.arms:
        x.q[a] = e.data.qpos[e.arm_qadr[a]].copy()
        d.qpos[e.arm_qadr[a]] = x.q[a]
        mujoco.mj_kinematics(e.model, d)
        x.pose[a] = (d.site_xpos[e.tcp[a]].copy(), d.site_xmat[e.tcp[a]].reshape(3, 3).copy())
        x.grip[a] = 0.0 if holding(e, a) else 1.0


def holding(e, arm) -> set:
    return {o.name for o in e.objects if o.name in e.obj_qadr and arm in e.grasped_by(o.name)}


def clear(x: Expert, arm):
    """Open the hand (dropping whatever it holds) and rise to CLEAR_Z, straight up."""
    if x.grip[arm] < 0.5:
        yield from x.wait(x.RELEASE_WAIT, grip={arm: 1.0})
    p, R = x.pose[arm]
    if p[2] < CLEAR_Z:
        yield from x.move({arm: (np.r_[p[:2], CLEAR_Z], R)}, steps=8)


def _home_pose(x: Expert, arm):
    d = x.e._ik_data
    d.qpos[x.e.arm_qadr[arm]] = x.e.home[arm]
    mujoco.mj_kinematics(x.e.model, d)
    return d.site_xpos[x.e.tcp[arm]].copy()


def _target(e, onto):
    """Where a placed object goes: (xy, height of the surface it rests on)."""
    n = e.layout.roles[onto]
    p = e.obj_pos(n)
    if onto.startswith("pad"):
        return p[:2], 0.0
    if onto == "bin":
        from world import twin
        return p[:2], 2 * twin.BIN_HALF[2] + 0.01
    return p[:2], p[2] + BLOCK


def _arm_for(e, name):
    """The arm that picks `name` now: the one holding it, else the one on its side of the table."""
    held = [a for a in e.arms if name in holding(e, a)]
    if held:
        return held[0]
    return e.arms[0] if len(e.arms) == 1 else ("left" if e.obj_pos(name)[0] < 0 else "right")


def _next_placement(x: Expert):
    """The next primitive of a pick-and-place task (PLACEMENTS), or None when every placement holds."""
    e = x.e
    placed = {name[len("place_"):]: pred for name, _, pred in e.stages if name.startswith("place_")}
    for role, onto in PLACEMENTS[e.task.name]:
        if placed[role](e):
            continue
        n = e.layout.roles[role]
        arm = _arm_for(e, n)
        others = [a for a in e.arms if a != arm and (holding(e, a) or
                  np.linalg.norm(x.pose[a][0] - _home_pose(x, a)) > 0.05)]
        if others:  # the other hand out of the way first: drop what it holds, go home
            return _chain(clear(x, others[0]), x.go_home([others[0]]))
        if n in holding(e, arm):
            return x.place(arm, n, *_target(e, onto))
        if holding(e, arm) or x.grip[arm] < 0.5 or x.pose[arm][0][2] < CLEAR_Z - 0.01:
            return clear(x, arm)
        return x.pick(arm, n, lift=0.06 + 0.04 * int(role[-1]) if role[-1].isdigit() else 0.10)
    return None


def _next_lift(x: Expert):
    e = x.e
    n = e.layout.roles["target"]
    arm = _arm_for(e, n)
    if n in holding(e, arm):
        p, R = x.pose[arm]
        return None if e.obj_pos(n)[2] > BLOCK + 0.06 else x.move({arm: (np.r_[p[:2], BLOCK + 0.12], R)}, steps=10)
    others = [a for a in e.arms if a != arm and np.linalg.norm(x.pose[a][0] - _home_pose(x, a)) > 0.05]
    if others:
        return _chain(clear(x, others[0]), x.go_home([others[0]]))
    if holding(e, arm) or x.grip[arm] < 0.5 or x.pose[arm][0][2] < CLEAR_Z - 0.01:
        return clear(x, arm)
    return x.pick(arm, n, lift=0.12)


def _chain(*gens):
    for g in gens:
        yield from g


NEXT = {**{t: _next_placement for t in PLACEMENTS}, "lift_block": _next_lift}


def closed_loop(x: Expert, max_primitives: int = 40):
    """Actions that finish x's task from the current state (after sync): replan after every primitive."""
    if x.e.task.name not in NEXT:
        raise ValueError(f"no closed-loop expert for {x.e.task.name}; there is one for {', '.join(NEXT)}")
    for _ in range(max_primitives):
        step = NEXT[x.e.task.name](x)
        if step is None:
            break
        yield from step
    away = [a for a in x.e.arms if not holding(x.e, a) and np.linalg.norm(x.pose[a][0] - _home_pose(x, a)) > 0.02]
    if away and x.e.task.name not in FRANKA_PLANS:  # as the plans: the bimanual arms end at home, the twin stays
        yield from x.go_home(away)
    yield from x.wait(30 if x.e.task.name == "lift_block" else 12)  # success holds 20 steps (lift) or 10


def make_expert(env) -> Expert:
    """The scripted expert for env's task, whichever suite (sim.py or twin.py) it belongs to."""
    return FrankaExpert(env) if env.task.name in FRANKA_PLANS else Expert(env)


def run_expert(task: str, seed: int, env: Env | None = None, record=False, grasp_natural: bool = False):
    """Roll out the expert once. Returns (success, furthest stage, steps, episode-or-None)."""
    if env is None:
        import world  # above sim.py and twin.py
        env = world.make_env(task, render=record)
    obs = env.reset(seed)
    x = make_expert(env)
    x.GRASP_YAW = not grasp_natural
    ep = rollout(env, obs, x.actions(), record)
    return env.success, env.stage, env.t, ep


def rollout(env, obs: dict, acts, record: bool, stop=lambda t: False):
    """Step env through the actions `acts` from its observation `obs` until stop(t) or they run out. With
    `record`, returns the frames as data.py saves them: each step's images, qpos, action and the named objects'
    (x, y) (world.located: "positions", in the order of "position_roles"); else None."""
    import world  # above this module
    ep = {"images": {c: [] for c in env.cameras}, "qpos": [], "positions": [], "action": []}
    for t, act in enumerate(acts):
        if stop(t):
            break
        if record:
            for c, img in obs["images"].items():
                ep["images"][c].append(img)
            ep["qpos"].append(obs["qpos"]), ep["positions"].append(world.located(env)[1]), ep["action"].append(act)
        obs = env.step(act, render=record)
    if not record or not ep["action"]:
        return None
    return {"images": {c: np.stack(v) for c, v in ep["images"].items()}, "qpos": np.stack(ep["qpos"]),
            "action": np.stack(ep["action"]), "positions": np.stack(ep["positions"]),
            "position_roles": world.located(env)[0], "instruction": env.layout.instruction, "task": env.task.name,
            "seed": env.seed}
