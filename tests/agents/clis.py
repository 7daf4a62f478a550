"""The real agent CLIs, installed in a cache and run offline against the scripted stand-in.

    from clis import run_claude, run_codex, run_gemini, have
    r = run_codex("fix the tests", [{"shell": "pytest -q"}, {"text": "Fixed."}], cwd=tmp_path)
    r.lines      # the CLI's stdout, one string a line (its JSON Lines)
    r.events     # the lines that are JSON, parsed
    r.requests   # what the CLI asked the stand-in (method, path, body)
    r.stray      # where it tried to go besides the stand-in (refused; should stay empty)

Where the CLIs are: ``$LOOP_TEST_AGENTS_DIR``, default ``~/.cache/loop-test-agents``
(an npm prefix: ``node_modules/.bin/{claude,codex,gemini}``), installed there by
``tests/agents/install-clis.sh`` at the pinned versions below (about 900 MB, the
three native builds). ``ensure_installed()`` runs that script when a CLI is
missing; ``have(name)`` says whether one is there without installing (tests skip
without it).

Every run is isolated and offline: a fresh home and config directory in a temp
dir (never the user's ~/.claude, ~/.codex, ~/.gemini), the stand-in as the model
API and as a refusing HTTPS proxy (so a stray request fails at once and is
listed in ``stray``), telemetry, update checks and auth prompts off.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import StandIn  # noqa: E402

HERE = Path(__file__).resolve().parent
INSTALL_SCRIPT = HERE / "install-clis.sh"
CACHE = Path(os.environ.get("LOOP_TEST_AGENTS_DIR") or Path.home() / ".cache" / "loop-test-agents")

# name -> (npm package, pinned version); install-clis.sh holds the same pins.
PACKAGES = {
    "claude": ("@anthropic-ai/claude-code", "2.1.332"),
    "codex": ("@openai/codex", "0.171.0"),
    "gemini": ("@google/gemini-cli", "0.61.0"),
}

# Claude Code hook events whose payloads record_hooks() captures.
HOOK_EVENTS = ["SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "PostToolUseFailure",
               "Notification", "Stop", "SubagentStart", "SubagentStop", "SessionEnd", "PermissionRequest",
               "PreCompact"]


def cli_path(name: str) -> Path:
    return CACHE / "node_modules" / ".bin" / name


def installed_version(name: str) -> str | None:
    pkg = CACHE / "node_modules" / PACKAGES[name][0] / "package.json"
    try:
        return json.loads(pkg.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def have(name: str) -> bool:
    """The pinned version of CLI ``name`` is installed (no install attempted)."""
    return cli_path(name).exists() and installed_version(name) == PACKAGES[name][1]


def ensure_installed(*names: str) -> None:
    """Install the CLIs that are missing (all three by default) with install-clis.sh; idempotent."""
    if all(have(n) for n in (names or PACKAGES)):
        return
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.parent / f"{CACHE.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # pytest-xdist workers: one installs, the others wait for it
        if not all(have(n) for n in (names or PACKAGES)):
            subprocess.run(["bash", str(INSTALL_SCRIPT), str(CACHE)], check=True)


@dataclass
class Result:
    returncode: int
    lines: list[str]
    stderr: str
    requests: list[dict] = field(default_factory=list)
    home: Path | None = None          # the run's temp home (kept when keep=True)

    @property
    def events(self) -> list[dict]:
        out = []
        for line in self.lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    @property
    def stray(self) -> list[str]:
        """Requests that were not for the model API: proxied attempts to reach elsewhere."""
        return [f"{r['method']} {r['path']}" for r in self.requests
                if r["method"] == "CONNECT" or r["path"].startswith("http")]


def base_env(home: Path, standin_url: str, extra: dict | None = None) -> dict:
    """A clean environment: PATH and locale from ours, a temp HOME, the stand-in as the only way out."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TERM", "TZ", "USER", "LOGNAME")}
    env.update({
        "HOME": str(home), "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "HTTPS_PROXY": standin_url, "HTTP_PROXY": standin_url, "https_proxy": standin_url,
        "http_proxy": standin_url, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "NO_COLOR": "1", "CI": "1",
    })
    env.update(extra or {})
    return {k: v for k, v in env.items() if v is not None}   # None in ``extra`` removes a variable


def _run(argv: list[str], env: dict, cwd: Path, timeout: float) -> tuple[int, list[str], str]:
    p = subprocess.run(argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout.splitlines(), p.stderr


def _go(name: str, script, cwd, keep: bool, timeout: float, prepare) -> Result:
    """Start the stand-in, let ``prepare(home, url)`` write config and give (argv, env), run, collect."""
    ensure_installed(name)
    home = Path(tempfile.mkdtemp(prefix=f"loop-{name}-"))
    try:
        with StandIn(script) as s:
            argv, env = prepare(home, s.url)
            rc, lines, err = _run(argv, env, Path(cwd), timeout)
            return Result(rc, lines, err, list(s.requests), home if keep else None)
    finally:
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


# --------------------------------------------------------------------------- Claude Code


def claude_telemetry_env(url: str) -> dict:
    """Claude Code's OpenTelemetry export to the stand-in (OTLP/HTTP JSON, exported every second)."""
    return {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "DISABLE_TELEMETRY": None,
            "OTEL_LOGS_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_ENDPOINT": url,
            "OTEL_LOGS_EXPORT_INTERVAL": "1000", "OTEL_METRIC_EXPORT_INTERVAL": "1000"}


def claude_env(home: Path, url: str, extra: dict | None = None) -> dict:
    return base_env(home, url, {
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-standin",
        "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # --dangerously-skip-permissions is refused as root unless the process says it is sandboxed
        "IS_SANDBOX": "1",
        **(extra or {}),
    })


def hooks_settings(log: Path, events: list[str] = HOOK_EVENTS) -> dict:
    """Claude Code settings with a command hook per event that appends its stdin (one JSON line) to ``log``."""
    cmd = f"{sys.executable} -c \"import sys; d=sys.stdin.read().strip(); " \
          f"open({str(log)!r}, 'a').write(d.replace(chr(10), ' ') + chr(10))\""
    return {"hooks": {ev: [{"matcher": "*", "hooks": [{"type": "command", "command": cmd}]}] for ev in events}}


def run_claude(prompt: str, script, cwd, *, args: tuple = (), settings: dict | None = None,
               env: dict | None = None, skip_permissions: bool = True, telemetry: bool = False,
               keep: bool = False, timeout: float = 120) -> Result:
    """``claude -p PROMPT --output-format stream-json --verbose --dangerously-skip-permissions``.

    ``settings`` (a dict) goes to ``--settings FILE``; ``skip_permissions=False`` leaves the flag out, so a
    tool that needs permission is denied (-p cannot ask); ``telemetry=True`` exports OTLP logs and metrics
    to the stand-in (``requests`` to ``/v1/logs``, ``/v1/metrics``)."""
    def prepare(home: Path, url: str):
        (home / ".claude").mkdir()
        argv = [str(cli_path("claude")), "-p", prompt, "--output-format", "stream-json", "--verbose",
                *(["--dangerously-skip-permissions"] if skip_permissions else []), *args]
        if settings is not None:
            f = home / "settings.json"
            f.write_text(json.dumps(settings, indent=2))
            argv += ["--settings", str(f)]
        return argv, claude_env(home, url, {**(claude_telemetry_env(url) if telemetry else {}), **(env or {})})
    return _go("claude", script, cwd, keep, timeout, prepare)


# --------------------------------------------------------------------------- Codex

CODEX_MODEL = "gpt-5.5"   # a slug in codex's own catalogue: no "model metadata not found" warning item


def codex_config(url: str, model: str = CODEX_MODEL) -> str:
    return f"""model = "{model}"
model_provider = "standin"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"

# the curated-plugin sync reaches github.com and chatgpt.com at start
[features]
plugins = false
remote_plugin = false

[model_providers.standin]
name = "standin"
base_url = "{url}/v1"
env_key = "STANDIN_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


def codex_mcp_echo() -> str:
    """config.toml lines that give codex the MCP server in mcp_echo.py (tools ``echo`` and ``fail``)."""
    return f"""
[mcp_servers.echo]
command = {json.dumps(sys.executable)}
args = [{json.dumps(str(HERE / "mcp_echo.py"))}]
"""


def run_codex(prompt: str, script, cwd, *, args: tuple = (), model: str = CODEX_MODEL, env: dict | None = None,
              config: str = "", keep: bool = False, timeout: float = 120) -> Result:
    """``codex exec --json PROMPT`` with CODEX_HOME a temp dir whose config.toml points at the stand-in
    (``config``: more TOML appended, e.g. ``codex_mcp_echo()``)."""
    def prepare(home: Path, url: str):
        chome = home / ".codex"
        chome.mkdir()
        (chome / "config.toml").write_text(codex_config(url, model) + config)
        argv = [str(cli_path("codex")), "exec", "--json", "--skip-git-repo-check", *args, prompt]
        return argv, base_env(home, url, {"CODEX_HOME": str(chome), "STANDIN_API_KEY": "sk-standin",
                                          **(env or {})})
    return _go("codex", script, cwd, keep, timeout, prepare)


# --------------------------------------------------------------------------- Gemini CLI

GEMINI_SETTINGS = {
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    # GOOGLE_GEMINI_BASE_URL alone selects the "gateway" auth type, which -p refuses ("Invalid auth method
    # selected."): the API-key type still honours the base URL.
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
    "ide": {"enabled": False},
}


def run_gemini(prompt: str, script, cwd, *, args: tuple = (), settings: dict | None = None,
               env: dict | None = None, keep: bool = False, timeout: float = 120) -> Result:
    """``gemini -p PROMPT --output-format stream-json --yolo`` with GEMINI_CLI_HOME a temp dir."""
    def prepare(home: Path, url: str):
        (home / ".gemini").mkdir()
        (home / ".gemini" / "settings.json").write_text(json.dumps(settings or GEMINI_SETTINGS, indent=2))
        argv = [str(cli_path("gemini")), "-p", prompt, "--output-format", "stream-json", "--yolo", *args]
        return argv, base_env(home, url, {"GEMINI_CLI_HOME": str(home), "GEMINI_API_KEY": "standin",
                                          "GOOGLE_GEMINI_BASE_URL": url, "GEMINI_CLI_NO_RELAUNCH": "1",
                                          **(env or {})})
    return _go("gemini", script, cwd, keep, timeout, prepare)


RUNNERS = {"claude": run_claude, "codex": run_codex, "gemini": run_gemini}
