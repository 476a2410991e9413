"""Data and policies that travel: LeRobot v3 datasets in and out, an openpi-compatible policy server
(optional extras: interop/requirements.txt)."""
