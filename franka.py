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
# Craig (modified) DH table of the arm, the flange and the hand (../shared/reference/franka.md)
DH_A = (0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088)  # m, Craig: a_{i-1}
DH_D = (0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0)  # m, d_i
DH_ALPHA = (0.0, -math.pi / 2, math.pi / 2, math.pi / 2, -math.pi / 2, math.pi / 2, math.pi / 2)  # alpha_{i-1}
FLANGE_D = 0.107  # m, link 7 -> flange along z
HAND_YAW = -math.pi / 4  # the hand is mounted on the flange rotated -45 deg about z
TCP_OFFSET = 0.1034  # m, hand -> between the fingertip pads
READY = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])  # rad
GRIPPER_MAX_WIDTH = 0.08  # m; qpos gripper = measured width / this


def dh_transform(a, d, alpha, theta) -> np.ndarray:
    """Craig (modified) DH: RotX(alpha) TransX(a) RotZ(theta) TransZ(d), as a 4x4 matrix."""
    ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
    return np.array([[ct, -st, 0, a], [st * ca, ct * ca, -sa, -d * sa], [st * sa, ct * sa, ca, d * ca], [0, 0, 0, 1]])


def tcp_position(q) -> np.ndarray:
    """(..., 7) joint angles (rad) -> (..., 3) the tcp, between the fingertip pads, in the base frame (m)."""
    q = np.asarray(q, np.float64)
    out = np.empty(q.shape[:-1] + (3,))
    for i in np.ndindex(q.shape[:-1]):
        T = np.eye(4)
        for a, d, alpha, theta in zip(DH_A, DH_D, DH_ALPHA, q[i]):
            T = T @ dh_transform(a, d, alpha, theta)
        out[i] = T[:3, 3] + T[:3, 2] * (FLANGE_D + TCP_OFFSET)  # the hand's yaw turns about this same z axis
    return out
