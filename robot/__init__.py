"""The real robot: Franka facts, drivers and demonstration recording."""
