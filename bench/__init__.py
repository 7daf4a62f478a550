"""Benchmarks: the sidecar side by side with the reference peers, in one run.

    python -m bench            full size (about 10 minutes on 2 cores)
    python -m bench --smoke    seconds; what CI runs so the command cannot rot
"""
