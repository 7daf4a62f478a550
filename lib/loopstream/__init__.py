"""loop: live progress streaming for task loops.

``from loopstream import Reporter`` reports a Python job's run; ``loopstream.tqdm``
(and ``trange``) is a tqdm progress bar that reports too (needs the tqdm extra).
Both are loaded on first use, so ``import loopstream`` stays light (``loop serve``
imports it before gevent patches anything).

The tree shows the two sides, which meet only through core and client (tests/test_layout.py checks it):
core (pure: events, the reducer, agent formats), sidecar (takes events, keeps state, streams), work (runs stories,
wraps commands, tails logs, adapts agents), client (how the work side and the CLI talk to a sidecar), cli (the
``loop`` command), view (the terminal rendering of a snapshot), installed (where the shell hooks and the dashboard
are). Each package's docstring names its modules.
"""
__version__ = "0.1.0"

__all__ = ["Reporter", "tqdm", "trange"]


def __getattr__(name: str):
    if name == "Reporter":
        from loopstream.work.reporter import Reporter

        return Reporter
    if name == "tqdm":
        from loopstream.work.reporter import tqdm_class

        return tqdm_class()
    if name == "trange":
        from loopstream.work.reporter import trange

        return trange
    raise AttributeError(f"module 'loopstream' has no attribute {name!r}")
