"""Franka facts shared by the twin's scene (twin.py) and the robot client (eval_real.py, record.py).

numpy only, no project imports: it sits below both sides (../shared/reference/franka.md; Franka's "robot and
interface specifications" for the acceleration and jerk limits).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Arm:
    """Joint limits of one Franka model, 7 values each: rad, rad/s, rad/s^2, rad/s^3."""
    q_min: tuple
    q_max: tuple
    dq_max: tuple
    ddq_max: tuple
    dddq_max: tuple


_FR3_DQ = (2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26)
_FR3_DDQ = (10.0,) * 7
_FR3_DDDQ = (5000.0,) * 7
ARMS = {
    "fr3": Arm((-2.9007, -1.8361, -2.9007, -3.0770, -2.8763, 0.4398, -3.0508),     # system >= 5.9
               (2.9007, 1.8361, 2.9007, -0.1169, 2.8763, 4.6216, 3.0508), _FR3_DQ, _FR3_DDQ, _FR3_DDDQ),
    "fr3-pre59": Arm((-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159),  # FR3, system < 5.9
                     (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159), _FR3_DQ, _FR3_DDQ, _FR3_DDDQ),
    "panda": Arm((-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),
                 (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973), (2.175,) * 4 + (2.61,) * 3,
                 (15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0), (7500.0, 3750.0, 5000.0, 6250.0, 7500.0, 10000.0, 10000.0)),
}
READY = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])  # rad
GRIPPER_MAX_WIDTH = 0.08  # m; qpos gripper = measured width / this


# ----------------------------------------------------------------------------- forward kinematics, workspace guard
# Craig (modified) DH of the Franka arm (franka.md; the twin's scene is built from the same table and
# tests/test_twin.py checks its compiled model against it). Lengths in m, the robot base frame (z up, x ahead).
DH_A = (0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088)
DH_D = (0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0)
DH_ALPHA = (0.0, -math.pi / 2, math.pi / 2, math.pi / 2, -math.pi / 2, math.pi / 2, math.pi / 2)
FLANGE_D = 0.107          # m, link 7 -> flange along z
HAND_YAW = -math.pi / 4   # the Franka Hand sits on the flange turned -45 deg about z
TCP_OFFSET = 0.1034       # m, flange -> between the fingertip pads (Franka's default end-effector frame)
FINGERTIP_D = TCP_OFFSET + 0.018   # m, flange -> the fingertip pads' far end (the twin's pads: 18 mm past the TCP)
FINGER_REACH = 0.052      # m, hand axis -> a finger's outer face, fully open (0.04 + the finger's 12 mm)


def flange_pose(q) -> np.ndarray:
    """4x4 pose of the flange in the base frame for the 7 joint angles q (rad)."""
    T = np.eye(4)
    for a, d, al, th in zip(DH_A, DH_D, DH_ALPHA, np.asarray(q, float)):
        ca, sa, ct, st = math.cos(al), math.sin(al), math.cos(th), math.sin(th)
        T = T @ np.array([[ct, -st, 0, a], [st * ca, ct * ca, -sa, -d * sa], [st * sa, ct * sa, ca, d * ca],
                          [0, 0, 0, 1]])
    T[:3, 3] += T[:3, 2] * FLANGE_D
    return T


def guard_points(q) -> dict:
    """{name: (3,) m, base frame}: the points of the end effector the workspace guard checks: the flange, the
    tool centre point (between the pads), and the two fingertips' far outer corners with the hand fully open
    (the lowest points of a hand pointing down, whatever its opening)."""
    T = flange_pose(q)
    c, s = math.cos(HAND_YAW), math.sin(HAND_YAW)
    y_hand = T[:3, :3] @ np.array([-s, c, 0.0])          # the fingers' opening axis
    z, o = T[:3, 2], T[:3, 3]
    tip = o + z * FINGERTIP_D
    return {"flange": o, "tcp": o + z * TCP_OFFSET, "finger_a": tip + FINGER_REACH * y_hand,
            "finger_b": tip - FINGER_REACH * y_hand}


@dataclass(frozen=True)
class Workspace:
    """A box for the end effector (guard_points), in m in the robot base frame (x ahead, z up), with the table
    top at `table_z`: the fingertips and the TCP stay above table_z + margin, the flange above that plus
    flange_clearance (so the hand's housing and a wrist camera stay off the table when the hand tilts).
    The default fits the twin's scene (the base on the table top, z = 0; table x -0.2..0.9, y -0.42..0.42;
    objects at x 0.42..0.68, |y| <= 0.27): its expert's fingertips come down to 4 mm above the table in every
    grasp of a 4 cm block (and its flange to 0.125 m), so a default margin above 4 mm would forbid the twin's
    own tasks; a lab raises it where its grasps allow."""
    x: tuple = (0.15, 0.85)
    y: tuple = (-0.40, 0.40)
    z_max: float = 0.85
    table_z: float = 0.0
    margin: float = 0.0
    flange_clearance: float = 0.08

    @property
    def lo(self):
        return np.array([self.x[0], self.y[0], self.table_z + self.margin])

    @property
    def hi(self):
        return np.array([self.x[1], self.y[1], self.z_max])

    def violation(self, q, tol=0.0):
        """None when every guard point of joints q lies in the box (grown by tol m), else (point name, its
        position, the worst excess in m)."""
        worst = None
        for name, p in guard_points(q).items():
            lo = self.lo + (name == "flange") * np.array([0.0, 0.0, self.flange_clearance])
            excess = float(np.max(np.r_[lo - tol - p, p - self.hi - tol]))
            if excess > 0 and (worst is None or excess > worst[2]):
                worst = (name, p, excess)
        return worst

    def first_outside(self, targets) -> int:
        """Index of the first target (rows of joint angles) whose end effector leaves the box; len if none."""
        for k, q in enumerate(np.asarray(targets, float)):
            if self.violation(q) is not None:
                return k
        return len(targets)

    def cut(self, q_from, targets, iters=20):
        """(targets up to the box, k): k is the first target leaving the box (len(targets) if none, the targets
        unchanged). Otherwise the targets before it, then the point of the joint-space segment into target k
        (from the one before it, or from q_from) where the end effector reaches the box's face (bisection,
        within 2^-iters of the segment): the policy's own path, stopped at the guard. Nothing when the segment
        starts outside."""
        t = np.asarray(targets, float)
        k = self.first_outside(t)
        if k == len(t):
            return t, k
        a, b = (np.asarray(q_from, float) if k == 0 else t[k - 1]), t[k]
        if self.violation(a) is not None:
            return t[:k], k
        inside, outside = 0.0, 1.0
        for _ in range(iters):
            mid = 0.5 * (inside + outside)
            if self.violation(a + mid * (b - a)) is None:
                inside = mid
            else:
                outside = mid
        return np.vstack([t[:k], a + inside * (b - a)]), k
