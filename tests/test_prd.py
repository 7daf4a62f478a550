"""PRD validation: every problem named by its JSON path; `loop run` refuses the same way."""
import json
import subprocess
import sys

import pytest

from loopstream.work import prd

GOOD = {"project": "P", "agent": "cat", "userStories": [
    {"id": "A", "title": "a", "acceptanceCriteria": ["x", {"text": "y", "check": "true"}], "priority": 1,
     "passes": False, "dependencies": []},
    {"id": "B", "title": "b", "priority": 2, "dependencies": ["A"]}]}


def problems(raw):
    return prd.validate(raw)


def test_a_good_prd_has_no_problems():
    assert problems(GOOD) == []


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r.pop("userStories"), "$.userStories: missing"),
    (lambda r: r["userStories"][1].pop("title"), "$.userStories[1].title: missing"),
    (lambda r: r["userStories"][1].update(id="A"), "$.userStories[1].id: duplicate id 'A'"),
    (lambda r: r["userStories"][1].update(dependencies=["Z"]), "$.userStories[1].dependencies[0]: unknown story id 'Z'"),
    (lambda r: r["userStories"][0].update(dependencies=["B"]), "circular: A -> B -> A"),
    (lambda r: r["userStories"][0].update(priority="high"), "$.userStories[0].priority: must be a number, not a string"),
    (lambda r: r["userStories"][0].update(passes="no"), "$.userStories[0].passes: must be true or false"),
    (lambda r: r["userStories"][0]["acceptanceCriteria"].append(5), "$.userStories[0].acceptanceCriteria[2]: must be text"),
    (lambda r: r["userStories"][0]["acceptanceCriteria"].append({"check": "true"}),
     "$.userStories[0].acceptanceCriteria[2].text: missing"),
    (lambda r: r.update(verificationCommands={"test": 3}), "$.verificationCommands.test: must be a shell command"),
    (lambda r: r.pop("agent"), "$.userStories[0].command: missing, and the PRD has no \"agent\""),
    (lambda r: r["userStories"][0].update(dependencies=["A"]), "cannot depend on itself"),
])
def test_each_problem_is_named_with_its_json_path(mutate, expected):
    raw = json.loads(json.dumps(GOOD))
    mutate(raw)
    assert any(expected in p for p in problems(raw)), problems(raw)


def test_all_problems_are_reported_at_once():
    raw = {"userStories": [{"id": 1}, {"id": "x", "title": 2, "dependencies": "A"}]}
    found = problems(raw)
    assert len(found) >= 4


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "project": "x",\n  "userStories": [,]\n}')
    with pytest.raises(prd.PrdError) as e:
        prd.load(path)
    assert "line 3, column 19" in e.value.problems[0]


def test_loop_validate_and_loop_run_refuse_an_invalid_prd_before_starting(tmp_path, server):
    path = tmp_path / "p.json"
    raw = json.loads(json.dumps(GOOD))
    raw["userStories"][1]["dependencies"] = ["nope"]
    path.write_text(json.dumps(raw))
    v = subprocess.run([sys.executable, "-m", "loopstream", "validate", str(path)], capture_output=True, text=True)
    assert v.returncode == 1 and "$.userStories[1].dependencies[0]: unknown story id 'nope'" in v.stderr
    r = subprocess.run([sys.executable, "-m", "loopstream", "run", str(path), "--server", server.url],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown story id 'nope'" in r.stderr and "Traceback" not in r.stderr
    assert server.get("/api/events").json()["events"] == []


def test_mark_passed_rewrites_atomically_keeping_everything_else(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**GOOD, "extra": {"keep": "me ✅"}}))
    prd.mark_passed(path, "B")
    raw = json.loads(path.read_text())
    assert raw["userStories"][1]["passes"] is True and raw["userStories"][0]["passes"] is False
    assert raw["extra"] == {"keep": "me ✅"}
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


@pytest.mark.parametrize("name", ["demo.json", "progress-streaming.json"])
def test_shipped_prds_are_valid(name):
    from conftest import ROOT

    loaded = prd.load(ROOT / "prds" / name)
    assert loaded.stories and not any(s.passes for s in loaded.stories)
