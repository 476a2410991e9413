"""Data and policies that travel: other projects' formats and protocols (optional extras: interop/requirements.txt)."""
