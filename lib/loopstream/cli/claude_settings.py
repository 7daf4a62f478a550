"""`loop hooks install|uninstall|status`: loop's hooks in a Claude Code settings file.

Install adds, for each hook event formats/hook_session.py maps, one command hook that runs
``loop-emit --hook`` (the hook's JSON on stdin, queued for the sidecar's POST /api/hooks/claude;
it prints nothing and always exits 0). Every other key and every hook that is not loop's is kept;
the file is written atomically, and only when it changes, so a second install leaves it byte for
byte the same. Install also points Claude Code's OpenTelemetry logs at the sidecar (the settings'
``env``: ``telemetry_env``) unless told not to, or unless one of those keys is already set to
something else. Uninstall removes exactly loop's hooks (and the lists and groups left empty by
that) and the env keys that still hold loop's values. A file that is not a JSON object is refused
and left untouched.

Where: the user's ``~/.claude/settings.json`` (``$CLAUDE_CONFIG_DIR/settings.json`` when set),
or a project's ``DIR/.claude/settings.json`` (``--project``) or ``settings.local.json``
(``--local``). The sidecar's URL is in the command; a token, in a file the command names.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopstream.core.formats.hook_session import HOOK_EVENTS

LOOP_HOOK = re.compile(r"loop-emit['\"]?\s+--hook(\s|$)")
HOOK_TIMEOUT = 10     # seconds Claude Code gives the command; it returns in milliseconds


class SettingsError(Exception):
    """A settings file loop will not touch (not JSON, not an object): one line naming it."""


@dataclass
class Where:
    path: Path
    scope: str      # user, project, local


def user_settings(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = Path(env["CLAUDE_CONFIG_DIR"]) if env.get("CLAUDE_CONFIG_DIR") else Path.home() / ".claude"
    return base / "settings.json"


def settings_path(project: str | None, local: bool, env: Mapping[str, str] | None = None) -> Where:
    """The settings file to change: ``--project [DIR]`` and ``--local`` pick a project's, else the user's."""
    if project is None and not local:
        return Where(user_settings(env), "user")
    if not Path(project or ".").is_dir():     # a typo is refused, never a new directory tree
        raise SettingsError(f"{project}: no such directory; --project takes an existing project directory")
    root = Path(project or ".").resolve() / ".claude"
    return Where(root / ("settings.local.json" if local else "settings.json"), "local" if local else "project")


def hook_command(emit: Path, server: str, token_file: Path | None = None, prompts: bool = False) -> str:
    """The shell command Claude Code runs (``sh -c``) for every hook event."""
    words = [shlex.quote(str(emit)), "--hook", "--server", shlex.quote(server)]
    if token_file is not None:
        words += ["--token-file", shlex.quote(str(token_file))]
    if prompts:
        words.append("--prompts")
    return " ".join(words)


def is_loop_hook(entry: Any) -> bool:
    return (isinstance(entry, dict) and entry.get("type") == "command" and isinstance(entry.get("command"), str)
            and LOOP_HOOK.search(entry["command"]) is not None)


def load(path: Path) -> tuple[dict, bytes | None]:
    """The settings (``{}`` when there is no file) and the file's bytes; SettingsError when loop must
    not touch it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        raise SettingsError(f"{path}: cannot be read ({e.strerror}); nothing was changed") from e
    try:
        settings = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except UnicodeDecodeError as e:
        raise SettingsError(f"{path}: not UTF-8 text (byte {e.start}); nothing was changed") from e
    except json.JSONDecodeError as e:
        raise SettingsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                            "fix it, then run this again; nothing was changed") from e
    if not isinstance(settings, dict):
        raise SettingsError(f"{path}: not a JSON object (it holds a {type(settings).__name__}); nothing was changed")
    hooks = settings.get("hooks", {})
    if not isinstance(hooks, dict) or not all(isinstance(v, list) for v in hooks.values()):
        raise SettingsError(f"{path}: \"hooks\" is not an object of lists; fix it, then run this again; "
                            "nothing was changed")
    return settings, raw


def with_loop(settings: dict, command: str) -> dict:
    """``settings`` with loop's hook on every event: an existing one updated in place, a missing one added."""
    out = json.loads(json.dumps(settings))
    hooks = out.setdefault("hooks", {})
    for event in HOOK_EVENTS:
        groups = hooks.get(event)
        if not isinstance(groups, list):
            groups = hooks[event] = []
        if not _replace_first(groups, command):
            groups.append({"matcher": "*", "hooks": [{"type": "command", "command": command,
                                                      "timeout": HOOK_TIMEOUT}]})
    return out


def _replace_first(groups: list, command: str) -> bool:
    """Set the first loop hook in ``groups`` to ``command`` and drop any other; False when there is none."""
    found = False
    for group in groups:
        entries = group.get("hooks") if isinstance(group, dict) else None
        if not isinstance(entries, list):
            continue
        for entry in [e for e in entries if is_loop_hook(e)]:
            if found:
                entries.remove(entry)
            else:
                entry["command"] = command
                found = True
    return found


def without_loop(settings: dict) -> dict:
    """``settings`` without loop's hooks, and without the groups, event lists and ``hooks`` they leave empty."""
    out = json.loads(json.dumps(settings))
    hooks = out.get("hooks")
    if not isinstance(hooks, dict):
        return out
    for event in list(hooks):
        groups = hooks[event]
        if not isinstance(groups, list):
            continue
        kept = []
        for group in groups:
            entries = group.get("hooks") if isinstance(group, dict) else None
            if isinstance(entries, list) and any(is_loop_hook(e) for e in entries):
                group["hooks"] = [e for e in entries if not is_loop_hook(e)]
                if not group["hooks"]:
                    continue
            kept.append(group)
        if kept:
            hooks[event] = kept
        else:
            del hooks[event]
    if not hooks:
        del out["hooks"]
    return out


def installed_commands(settings: dict) -> dict[str, str]:
    """Event -> loop's command there, for the events where loop's hook is."""
    found: dict[str, str] = {}
    for event, groups in (settings.get("hooks") or {}).items():
        for group in groups if isinstance(groups, list) else []:
            entries = group.get("hooks") if isinstance(group, dict) else None
            for entry in entries if isinstance(entries, list) else []:
                if is_loop_hook(entry):
                    found.setdefault(event, entry["command"])
    return found


def render(settings: dict) -> bytes:
    return (json.dumps(settings, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def save(path: Path, settings: dict, old: bytes | None, private: bool = False) -> bool:
    """Write ``settings`` atomically (a temporary file beside it, renamed over it, its mode kept; only
    its owner's when ``private``: it holds a secret); nothing when the bytes would be the same. True
    when written."""
    new = render(settings)
    if new == old:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if old is not None else 0o644
    if private:
        mode &= 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def telemetry_env(server: str, token: str | None = None) -> dict[str, str]:
    """The ``env`` that points Claude Code's OpenTelemetry logs at the sidecar's POST /v1/logs (the
    logs signal's own variables, so a metrics or traces exporter the user set stays theirs)."""
    env = {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_LOGS_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": server.rstrip("/") + "/v1/logs", "OTEL_LOGS_EXPORT_INTERVAL": "5000"}
    if token:
        env["OTEL_EXPORTER_OTLP_LOGS_HEADERS"] = f"Authorization=Bearer {token}"
    return env


def telemetry_conflicts(settings: dict, wanted: dict[str, str]) -> list[str]:
    """The keys of ``wanted`` that the settings' env already sets to something else (left as they are);
    what an earlier install wrote (for another sidecar, another token) is loop's to change."""
    env = settings.get("env")
    if not isinstance(env, dict):
        return []
    found = installed_commands(settings)
    server = server_of(next(iter(found.values()))) if found else None
    before = telemetry_env(server) if server else {}
    return [k for k, v in wanted.items()
            if k in env and env[k] != v and env[k] != before.get(k) and not _loop_header(k, env[k], env, before)]


def with_telemetry(settings: dict, wanted: dict[str, str]) -> dict:
    out = dict(settings)
    env = out["env"] = dict(out["env"]) if isinstance(out.get("env"), dict) else {}
    env.update(wanted)
    return out


def without_telemetry(settings: dict, ours: dict[str, str]) -> dict:
    """``settings`` without the env keys that still hold loop's values (and without an env left empty)."""
    env = settings.get("env")
    if not isinstance(env, dict):
        return settings
    kept = {k: v for k, v in env.items() if ours.get(k) != v and not _loop_header(k, v, env, ours)}
    if len(kept) == len(env):
        return settings
    out = dict(settings)
    if kept:
        out["env"] = kept
    else:
        del out["env"]
    return out


def _loop_header(key: str, value: object, env: dict, ours: dict[str, str]) -> bool:
    """The token header install wrote (its token is not known at uninstall): beside loop's endpoint."""
    endpoint = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
    return (key == "OTEL_EXPORTER_OTLP_LOGS_HEADERS" and isinstance(value, str)
            and value.startswith("Authorization=Bearer ") and env.get(endpoint) == ours.get(endpoint))


def server_of(command: str) -> str | None:
    """The sidecar URL in loop's hook command (its --server argument)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    return next((words[i + 1] for i, w in enumerate(words[:-1]) if w == "--server"), None)


def install(where: Where, command: str, telemetry: dict[str, str] | None = None) -> tuple[bool, list[str]]:
    """Write loop's hooks (and ``telemetry``'s env unless one of its keys is set otherwise); (written,
    the conflicting keys that kept telemetry out)."""
    settings, raw = load(where.path)
    new = with_loop(settings, command)
    conflicts = telemetry_conflicts(settings, telemetry) if telemetry else []
    if telemetry and not conflicts:
        new = with_telemetry(new, telemetry)
    secret = bool(telemetry) and not conflicts and any("Authorization" in v for v in (telemetry or {}).values())
    return save(where.path, new, raw, private=secret), conflicts


def uninstall(where: Where) -> bool:
    settings, raw = load(where.path)
    found = installed_commands(settings)
    if raw is None or not found:
        return False
    server = server_of(next(iter(found.values())))
    new = without_loop(settings)
    if server is not None:
        new = without_telemetry(new, telemetry_env(server))
    return save(where.path, new, raw)


def write_token(token: str, env: Mapping[str, str] | None = None) -> Path:
    """The sidecar's token in a file only its owner reads, for the hook command to name."""
    env = os.environ if env is None else env
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "loop"
    base.mkdir(parents=True, exist_ok=True)
    path = base / "hook-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return path
