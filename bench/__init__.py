"""cussim's benchmarks: ``python -m bench`` from the repository root (see run.py and NOTES.md)."""
