"""PRD files: load, validate (every problem named by its JSON path), write back.

The format is the one claude-loop and ralph users already have, plus our
``agent`` template, per-story ``command``, per-criterion ``check`` and
``verificationCommands``.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopstream.core.formats import PRD_FORMATS


class PrdError(Exception):
    """A PRD that cannot be run; ``problems`` lists each one as 'path: what is wrong'."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass
class Criterion:
    text: str
    check: str | None = None


@dataclass
class Story:
    id: str
    title: str
    description: str = ""
    criteria: list[Criterion] = field(default_factory=list)
    priority: float = 0
    passes: bool = False
    dependencies: list[str] = field(default_factory=list)
    command: str | None = None
    index: int = 0

    def prompt(self, prd: Prd) -> str:
        lines = [f"# {self.id}: {self.title}", ""]
        if prd.project:
            lines += [f"Project: {prd.project}", ""]
        if self.description:
            lines += [self.description, ""]
        if self.criteria:
            lines += ["Acceptance criteria:", *[f"- {c.text}" for c in self.criteria], ""]
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {"id": self.id, "title": self.title, "description": self.description,
                "acceptanceCriteria": [c.text for c in self.criteria], "priority": self.priority,
                "dependencies": self.dependencies}


@dataclass
class Prd:
    path: Path
    project: str
    description: str
    agent: str | None
    verification: dict[str, str]
    stories: list[Story]
    raw: dict
    branch: str | None = None
    agent_format: str = "text"          # agentFormat: "text" or one of AGENT_FORMATS
    stall_after: float | None = None    # stallAfter, seconds
    story_timeout: float | None = None  # storyTimeout, seconds
    max_cost: float | None = None       # maxCost, dollars
    max_repeat: int | None = None       # maxRepeat, identical tool calls in a row

    def story(self, sid: str) -> Story:
        return next(s for s in self.stories if s.id == sid)


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


AGENT_FORMATS = ("text", *PRD_FORMATS)
# Agent-aware run settings: key -> (smallest allowed value, whether it may equal it, what it is).
AGENT_LIMITS = {"stallAfter": (0, False, "seconds"), "storyTimeout": (0, False, "seconds"),
                "maxCost": (0, True, "dollars"), "maxRepeat": (2, True, "identical tool calls in a row")}
WHOLE = ("maxRepeat",)      # counted, not measured: a whole number


def _agent_problems(raw: dict) -> list[str]:
    """agentFormat, stallAfter, storyTimeout, maxCost, maxRepeat: each optional, each checked."""
    problems = []
    fmt = raw.get("agentFormat")
    if fmt is not None and fmt not in AGENT_FORMATS:
        problems.append(f"$.agentFormat: must be one of {', '.join(repr(f) for f in AGENT_FORMATS)}, not {fmt!r}")
    for key, (low, inclusive, unit) in AGENT_LIMITS.items():
        value = raw.get(key)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        whole = key not in WHOLE or (number and float(value).is_integer())
        if not number or not whole or value > 1e9 or value < low or (value == low and not inclusive):
            bound = f"{'at least' if inclusive else 'more than'} {low}"
            kind = "a whole number" if key in WHOLE else "a number"
            problems.append(f"$.{key}: must be {kind} of {unit}, {bound}, not {value!r}")
    return problems


class _Problems(list):
    """The problems found so far, and the one type check every field goes through."""

    def want(self, path: str, value: Any, kinds: tuple, label: str, required: bool = False) -> bool:
        """Is ``value`` one of ``kinds``? A missing value is fine unless ``required``; a bool is no number."""
        if value is None:
            if required:
                self.append(f"{path}: missing (required, {label})")
            return False
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            self.append(f"{path}: must be {label}, not {_type_name(value)}")
            return False
        return True


def validate(raw: Any) -> list[str]:
    """Every problem of a parsed PRD, each as 'json.path: message'."""
    if not isinstance(raw, dict):
        return [f"$: a PRD is a JSON object, not {_type_name(raw)}"]
    problems = _Problems()
    for key in ("project", "branchName", "description", "agent"):
        problems.want(f"$.{key}", raw.get(key), (str,), "a string")
    problems += _agent_problems(raw)
    verification: Any = raw.get("verificationCommands")
    if problems.want("$.verificationCommands", verification, (dict,), "an object of name: shell command"):
        for name, cmd in verification.items():
            problems.want(f"$.verificationCommands.{name}", cmd, (str,), "a shell command string", True)
    stories: Any = raw.get("userStories")
    if not problems.want("$.userStories", stories, (list,), "a list of stories", True):
        return list(problems)
    if not stories:
        problems.append("$.userStories: empty; add at least one story")
    ids: dict[str, int] = {}
    for i, story in enumerate(stories):
        _check_story(problems, story, i, ids, bool(raw.get("agent")))
    _check_dependencies(problems, stories, ids)
    return list(problems)


def _check_story(problems: _Problems, s: Any, i: int, ids: dict[str, int], has_agent: bool) -> None:
    """One story's fields; its id goes into ``ids`` (a duplicate is a problem)."""
    p = f"$.userStories[{i}]"
    if not isinstance(s, dict):
        problems.append(f"{p}: must be an object, not {_type_name(s)}")
        return
    if problems.want(f"{p}.id", s.get("id"), (str,), "a string", True):
        if s["id"] in ids:
            problems.append(f"{p}.id: duplicate id '{s['id']}' (also $.userStories[{ids[s['id']]}])")
        else:
            ids[s["id"]] = i
    problems.want(f"{p}.title", s.get("title"), (str,), "a string", True)
    problems.want(f"{p}.description", s.get("description"), (str,), "a string")
    problems.want(f"{p}.priority", s.get("priority"), (int, float), "a number")
    problems.want(f"{p}.passes", s.get("passes"), (bool,), "true or false")
    problems.want(f"{p}.command", s.get("command"), (str,), "a shell command string")
    criteria: Any = s.get("acceptanceCriteria")
    if problems.want(f"{p}.acceptanceCriteria", criteria, (list,), "a list"):
        for j, c in enumerate(criteria):
            _check_criterion(problems, c, f"{p}.acceptanceCriteria[{j}]")
    deps: Any = s.get("dependencies")
    if problems.want(f"{p}.dependencies", deps, (list,), "a list of story ids"):
        for j, d in enumerate(deps):
            if not isinstance(d, str):
                problems.append(f"{p}.dependencies[{j}]: must be a story id string")
    if not s.get("command") and not has_agent and isinstance(s.get("id"), str):
        problems.append(f"{p}.command: missing, and the PRD has no \"agent\" template to run it with")


def _check_criterion(problems: _Problems, c: Any, cp: str) -> None:
    if isinstance(c, dict):
        problems.want(f"{cp}.text", c.get("text"), (str,), "a string", True)
        problems.want(f"{cp}.check", c.get("check"), (str,), "a shell command string")
    elif not isinstance(c, str):
        problems.append(f"{cp}: must be text or {{\"text\", \"check\"}}, not {_type_name(c)}")


def _check_dependencies(problems: _Problems, stories: list, ids: dict[str, int]) -> None:
    """Dependencies name known stories, not the story itself, and form no cycle."""
    graph: dict[str, list[str]] = {}
    for i, s in enumerate(stories):
        if isinstance(s, dict) and isinstance(s.get("id"), str) and isinstance(s.get("dependencies"), list):
            graph[s["id"]] = [d for j, d in enumerate(s["dependencies"])
                              if isinstance(d, str) and _known_dependency(problems, s["id"], d, ids, i, j)]
    cycle = _find_cycle(graph)
    if cycle:
        problems.append(f"$.userStories[{ids[cycle[0]]}].dependencies: circular: {' -> '.join(cycle)}")


def _known_dependency(problems: _Problems, story: str, d: str, ids: dict[str, int], i: int, j: int) -> bool:
    """Is ``d`` a dependency to keep in the graph? (Unknown or self: a problem, not kept.)"""
    if d not in ids:
        problems.append(f"$.userStories[{i}].dependencies[{j}]: unknown story id '{d}'")
        return False
    if d == story:
        problems.append(f"$.userStories[{i}].dependencies[{j}]: a story cannot depend on itself")
        return False
    return True


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = {n: WHITE for n in graph}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = GREY
        stack.append(n)
        for m in graph.get(n, []):
            if color.get(m) == GREY:
                return stack[stack.index(m):] + [m]
            if color.get(m) == WHITE:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        color[n] = BLACK
        return None

    for n in graph:
        if color[n] == WHITE:
            found = visit(n)
            if found:
                return found
    return None


def load(path: str | Path) -> Prd:
    """Read and validate a PRD; raise PrdError naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PrdError(path, ["no such file"]) from e
    except (OSError, UnicodeDecodeError) as e:
        raise PrdError(path, [f"cannot read: {e}"]) from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise PrdError(path, [f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"]) from e
    problems = validate(raw)
    if problems:
        raise PrdError(path, problems)
    stories = []
    for i, s in enumerate(raw["userStories"]):
        criteria = [Criterion(c["text"], c.get("check")) if isinstance(c, dict) else Criterion(c)
                    for c in s.get("acceptanceCriteria") or []]
        stories.append(Story(id=s["id"], title=s["title"], description=s.get("description") or "",
                             criteria=criteria, priority=s.get("priority", i + 1), passes=bool(s.get("passes")),
                             dependencies=list(s.get("dependencies") or []), command=s.get("command"), index=i))
    return Prd(path=path, project=raw.get("project") or path.stem, description=raw.get("description") or "",
               agent=raw.get("agent"), verification=dict(raw.get("verificationCommands") or {}),
               stories=stories, raw=raw, branch=raw.get("branchName"),
               agent_format=raw.get("agentFormat") or "text", stall_after=raw.get("stallAfter"),
               story_timeout=raw.get("storyTimeout"), max_cost=raw.get("maxCost"),
               max_repeat=int(raw["maxRepeat"]) if raw.get("maxRepeat") is not None else None)


def mark_passed(path: Path, story_id: str) -> None:
    """Set ``passes: true`` for one story, re-reading the file and replacing it atomically."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    for s in raw["userStories"]:
        if s.get("id") == story_id:
            s["passes"] = True
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(raw, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
