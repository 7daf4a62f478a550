"""Where the files that ship beside the package are: the shell hooks and the dashboard.

In a checkout (and an editable install) they sit beside lib/: bin/ and dashboard/. A wheel
(pip, pipx, ``pip install --user``) puts the hooks with the console scripts (setup.cfg's
``scripts``: a venv's bin/, ~/.local/bin) and the dashboard under the data prefix
(``share/loop/dashboard``). Each lookup tries the checkout first, then every install scheme
this interpreter knows, so the same code finds them however loop was installed.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]   # lib/loopstream/installed.py -> the checkout's root
HOOKS = ("loop-emit", "loop-progress.sh")


def _scheme_paths(key: str) -> list[Path]:
    """``key`` ("scripts" or "data") in this interpreter's install schemes: the default, then the user's."""
    found = [Path(sysconfig.get_path(key))]
    try:
        found.append(Path(sysconfig.get_path(key, f"{os.name}_user")))
    except KeyError:
        pass
    return found


def hook_path(name: str) -> Path | None:
    """The installed or checked-out shell hook ``name`` (one of HOOKS), None when none is found."""
    places = [CHECKOUT / "bin", Path(sys.executable).parent, *_scheme_paths("scripts")]
    for place in places:
        candidate = place / name
        if candidate.is_file():
            return candidate
    return None


def dashboard_dir() -> Path:
    """dashboard/ beside lib/ in a checkout, or share/loop/dashboard where a wheel put it."""
    places = [CHECKOUT / "dashboard", Path(sys.prefix) / "share" / "loop" / "dashboard",
              *(data / "share" / "loop" / "dashboard" for data in _scheme_paths("data"))]
    for place in places:
        if (place / "index.html").is_file():
            return place
    return places[0]
