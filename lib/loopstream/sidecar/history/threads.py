"""Real threads under gevent: history's writer thread and its fsyncs must not stop the event loop.

Under the gevent worker ``threading`` is patched: a plain thread would be a greenlet, and a
blocking ``fsync`` in it would stop every other request of the worker.
"""
from __future__ import annotations

import time


def off_the_loop(fn, *args):
    """Run a blocking call (an fsync) in gevent's thread pool when gevent has patched threading, so
    the worker's other greenlets go on meanwhile (and write the next group of events); else here."""
    try:
        from gevent import monkey
        if monkey.is_module_patched("threading"):
            import gevent
            return gevent.get_hub().threadpool.apply(fn, args)
    except ImportError:
        pass
    return fn(*args)


def native_thread_tools():
    """A real OS thread, lock and sleep, even when gevent has patched threading."""
    import _thread
    try:
        from gevent import monkey
        if monkey.is_module_patched("threading"):
            return (monkey.get_original("_thread", "start_new_thread"),
                    monkey.get_original("_thread", "allocate_lock"),
                    monkey.get_original("time", "sleep"))
    except ImportError:
        pass
    return _thread.start_new_thread, _thread.allocate_lock, time.sleep
