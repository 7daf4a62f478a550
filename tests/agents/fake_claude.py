#!/usr/bin/env python3
"""A fake `claude -p … --output-format stream-json --verbose`: replays a recorded session.

    fake_claude.py SESSION.jsonl [--delay S] [--then-sleep S] [--exit N]

Prints the session's lines one by one (flushed, ``--delay`` seconds apart, as
a real agent streams them), then sleeps ``--then-sleep`` seconds (an agent
that goes silent), then exits with ``--exit``. It reads and ignores its stdin
(the story the runner hands it). Recorded sessions are beside this file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("session")
    p.add_argument("--delay", type=float, default=0.05)
    p.add_argument("--then-sleep", type=float, default=0.0)
    p.add_argument("--exit", type=int, default=0)
    args = p.parse_args()
    path = Path(args.session)
    if not path.is_absolute():
        path = Path(__file__).resolve().parent / path
    for line in path.read_text(encoding="utf-8").splitlines():
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        time.sleep(args.delay)
    time.sleep(args.then_sleep)
    return args.exit


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:      # SIGINT from a stop or a timeout: end like claude does
        sys.exit(130)
