"""Exit codes, named once (httpie's ``ExitStatus``): what every `loop` command exits with."""
from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0              # passed, matched, done
    FAILURE = 1         # a story failed, a timeout, an error
    USAGE = 2           # a usage mistake (Click's own code for them)
    INTERRUPTED = 130   # stopped: Ctrl-C, SIGTERM, SIGHUP, `loop stop`, the dashboard's Stop

    @classmethod
    def of_run(cls, status: str) -> ExitStatus:
        """The code for a finished run's status: passed 0, stopped 130, anything else 1."""
        return {"passed": cls.OK, "stopped": cls.INTERRUPTED}.get(status, cls.FAILURE)
