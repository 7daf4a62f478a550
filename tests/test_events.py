import pytest

from loopstream import events as ev


def test_single_event_gets_default_run_and_empty_data():
    (d,) = ev.validate_body({"type": "progress"})
    assert d == ev.Draft("progress", "default", {})


def test_batch_is_validated_all_or_nothing_and_names_the_index():
    with pytest.raises(ev.EventError) as e:
        ev.validate_body([{"type": "a"}, {"type": "b", "data": [1]}])
    assert e.value.field == "[1].data"


@pytest.mark.parametrize("body, field", [
    ({"type": "Bad"}, "type"),
    ({"type": ""}, "type"),
    ({"type": "a" * 65}, "type"),
    ({"type": 3}, "type"),
    ({}, "type"),
    ({"type": "x", "run": "has space"}, "run"),
    ({"type": "x", "run": "r" * 65}, "run"),
    ({"type": "x", "run": 5}, "run"),
    ({"type": "x", "data": "text"}, "data"),
    ({"type": "x", "data": [1, 2]}, "data"),
    ({"type": "x", "story_id": "flat"}, "story_id"),
    ({"type": "hello"}, "type"),
    ([], "body"),
    ("just a string", "body"),
    ([1], "[0]"),
])
def test_invalid_events_name_the_field(body, field):
    with pytest.raises(ev.EventError) as e:
        ev.validate_body(body)
    assert e.value.field == field
    assert e.value.as_json()["field"] == field


def test_client_ids_and_timestamps_are_accepted_and_replaced_later():
    (d,) = ev.validate_body({"type": "x", "id": "1-1", "ts": 5, "run": "r"})
    assert d == ev.Draft("x", "r", {})


def test_batch_size_is_capped():
    with pytest.raises(ev.EventError, match="at most"):
        ev.validate_body([{"type": "x"}] * (ev.MAX_BATCH + 1))


@pytest.mark.parametrize("raw", [b"{", b'{"type": NaN}', b"[" * 100_000, b"\xff\xfe", b'{"type": Infinity}'])
def test_loads_turns_every_malformed_body_into_an_event_error(raw):
    with pytest.raises(ev.EventError) as e:
        ev.loads(raw)
    assert e.value.field == "body"


def test_ids_parse_and_order_as_tuples():
    assert ev.parse_id("1700000000000-42") == (1700000000000, 42)
    assert ev.parse_id("1-9") < ev.parse_id("1-10") < ev.parse_id("2-1")
    for bad in ("", "12", "a-1", "1-", "-1", "1-2-3", None, 5):
        assert ev.parse_id(bad) is None


def test_dumps_is_one_ascii_line_even_for_newlines_and_unicode():
    out = ev.dumps({"t": "a\nb\u2028ü😀\ud800"})
    assert "\n" not in out and out.isascii()
