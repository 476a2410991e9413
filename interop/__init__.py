"""Data and policies in the ecosystem's formats: LeRobot v3 datasets, an openpi-compatible policy server."""
