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
