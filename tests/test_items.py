"""One table of item grammar cases (tests/fixtures/tables/emit_items.json), run against `loop emit`
(Python, a real sidecar stores the event) and bin/loop-emit (bash, its spool file holds the event)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, free_port
from loopstream.core.events import EventError, validate_one
from loopstream.core.items import ItemError, parse_items

TABLE = json.loads((ROOT / "tests" / "fixtures" / "tables" / "emit_items.json").read_text())["cases"]
EMIT = str(ROOT / "bin" / "loop-emit")


def checked(items: list[str]) -> dict:
    """The data `loop emit` would send: parsed, then checked as the sidecar checks it."""
    data = parse_items(items)
    validate_one({"type": "note", "data": data})
    return data


@pytest.mark.parametrize("case", TABLE, ids=[c["name"] for c in TABLE])
def test_parse_items_follows_the_table(case):
    if case.get("error"):
        with pytest.raises((ItemError, EventError), match=re.escape(case["error"]) if case["error"] is not True else None):
            checked(case["items"])
    else:
        assert checked(case["items"]) == case["data"]


def test_loop_emit_builds_what_the_table_says(server):
    for n, case in enumerate(TABLE):
        run = f"items-{n}"
        r = subprocess.run([sys.executable, "-m", "loopstream", "emit", "note", *case["items"], "--run", run,
                            "--server", server.url], capture_output=True, text=True, timeout=30)
        stored = server.get("/api/events", params={"run": run}).json()["events"]
        if case.get("error"):
            assert (r.returncode, stored) == (2, []), case["name"]
            assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (case["name"], r.stderr)
            if isinstance(case["error"], str):
                assert case["error"] in r.stderr, (case["name"], r.stderr)
        else:
            assert r.returncode == 0, (case["name"], r.stderr)
            assert [e["data"] for e in stored] == [case["data"]], case["name"]


def test_bin_loop_emit_builds_what_the_table_says(spool):
    env = {**os.environ, "LOOP_SERVER": f"http://127.0.0.1:{free_port()}", "LOOP_SPOOL_DIR": str(spool)}
    for n, case in enumerate(TABLE):
        run = f"items-{n}"
        r = subprocess.run([EMIT, "note", *case["items"]], capture_output=True, text=True, timeout=30,
                           env={**env, "LOOP_RUN": run})
        queued = list(spool.glob(f"*__{run}.jsonl"))
        if case.get("error"):
            assert (r.returncode, queued) == (2, []), case["name"]
            assert r.stderr.count("\n") == 1, (case["name"], r.stderr)
            if isinstance(case["error"], str):
                assert case["error"] in r.stderr, (case["name"], r.stderr)
        else:
            assert r.returncode == 0, (case["name"], r.stderr)
            (line,) = queued[0].read_text().splitlines()
            assert json.loads(line)["data"] == case["data"], case["name"]


def test_loop_emit_help_names_every_item_form():
    r = subprocess.run([sys.executable, "-m", "loopstream", "emit", "--help"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0
    assert "KEY[]=TEXT" in r.stdout and "KEY:=JSON" in r.stdout and "KEY=TEXT" in r.stdout


def _json_values():
    """JSON values as the sidecar meets them: every kind, numbers near and past its bounds, text with
    escapes, surrogates and control characters, nesting near its depth limit."""
    from hypothesis import strategies as st

    numbers = st.one_of(st.integers(-10**17, 10**17), st.floats(allow_nan=False, allow_infinity=False),
                        st.sampled_from([1e15, -1e15, 1e15 + 2, 10**15 + 1, 1e-320, 0.0, -0.0]))
    text = st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)), max_size=8)
    leaves = st.one_of(st.none(), st.booleans(), numbers, text)
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(text, inner, max_size=3)), max_leaves=12)


def _json_texts():
    """Texts that are JSON, nearly JSON (a character cut, added or changed), or JSON-like by hand."""
    from hypothesis import strategies as st

    dumped = st.builds(lambda v, ascii_only, indent: json.dumps(v, ensure_ascii=ascii_only, indent=indent),
                       _json_values(), st.booleans(), st.sampled_from([None, 0, 1]))
    handmade = st.sampled_from(['"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', "1e999", "-1e999", "NaN",
                                "Infinity", "1e400", "1E-400", "01", "1.", ".5", "-", "+1", '"\\x"', '"\t"',
                                "[" * 31 + "]" * 31, "[" * 32 + "]" * 32, "{}", "[]", "tru", "nul", '{"a":1,}',
                                "1000000000000000.5", "999999999999999.9e0", "0.1e16", "0.01e17", "100000e10"])

    def mutate(text, where, what, how):
        i = where % (len(text) + 1)
        return {"cut": text[:i] + text[i + 1:], "add": text[:i] + what + text[i:], "swap": text[:i] + what + text[i + 1:]}[how]

    mutated = st.builds(mutate, dumped, st.integers(0, 200), st.sampled_from(list(',:[]{}"\\ 0e-.nx\x01\x7f')),
                        st.sampled_from(["cut", "add", "swap"]))
    return st.one_of(dumped, handmade, mutated)


def _sidecar_accepts(text: str) -> bool:
    from loopstream.core import events

    try:
        validate_one({"type": "note", "data": {"x": events.loads(text)}})
    except EventError:
        return False
    return True


def test_bin_loop_emit_checks_a_json_value_as_the_sidecar_does(spool):
    """bin/loop-emit refuses (exit 2, nothing queued) exactly the KEY:= values the sidecar would refuse."""
    from hypothesis import HealthCheck, given, settings

    env = {**os.environ, "LOOP_SERVER": f"http://127.0.0.1:{free_port()}", "LOOP_SPOOL_DIR": str(spool),
           "LOOP_RUN": "json-check"}

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_json_texts())
    def check(text):
        if "\x00" in text:      # a shell argument cannot hold NUL
            return
        before = sum(1 for _ in spool.glob("*.jsonl") for _ in _.open())
        r = subprocess.run([EMIT, "note", f"x:={text}"], capture_output=True, text=True, timeout=30, env=env)
        queued = sum(1 for _ in spool.glob("*.jsonl") for _ in _.open()) - before
        expected = _sidecar_accepts(text)
        assert (r.returncode == 0, queued) == (expected, int(expected)), (text, r.stderr)
        if not expected:
            assert r.returncode == 2 and "data.x" in r.stderr and r.stderr.count("\n") == 1, (text, r.stderr)

    check()


def test_bin_loop_emit_checks_a_long_value_as_the_sidecar_does(spool):
    """Past 4 KB the bash walk hands over to python3 with the same rules (the walk's cost grows with the
    square of the length): a long value is still refused exactly when the sidecar would refuse it."""
    env = {**os.environ, "LOOP_SERVER": f"http://127.0.0.1:{free_port()}", "LOOP_SPOOL_DIR": str(spool),
           "LOOP_RUN": "long-json"}
    good = json.dumps([{"n": i, "t": "x" * 20} for i in range(1500)])
    cases = [good, good[:-1], good[:-1] + ",1e999]", good[:-1] + ',"\\ud800"]', good[:-1] + ",1000000000000001]",
             "[" * 40 + good + "]" * 40, good + " "]
    for text in cases:
        assert len(text) > 4096
        r = subprocess.run([EMIT, "note", f"x:={text}"], capture_output=True, text=True, timeout=30, env=env)
        expected = _sidecar_accepts(text)
        assert r.returncode == (0 if expected else 2), (text[-40:], r.stderr)
        if not expected:
            assert "data.x" in r.stderr and r.stderr.count("\n") == 1
