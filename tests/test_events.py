import pytest

from loopstream.core import events as ev


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


@pytest.mark.parametrize("raw, field", [
    (b'{"type":"task_started","run":"p","data":{"story_count":1e999}}', "data.story_count"),
    (b'{"type":"task_started","data":{"estimated_duration":' + b"9" * 400 + b"}}", "data.estimated_duration"),
    (b'{"type":"x","data":{"a":[1,{"b":-1e16}]}}', "data.a[1].b"),
    (b'{"type":"x","data":{"odd key":1000000000000001}}', 'data["odd key"]'),
    (b'[{"type":"x"},{"type":"y","data":{"n":1e300}}]', "[1].data.n"),
    (b'{"type":"x","data":{"t":"\\ud800"}}', "data.t"),
    (b'{"type":"x","data":{"deep":' + b"[" * 40 + b"]" * 40 + b"}}", None),
])
def test_numbers_text_and_nesting_in_data_are_checked_at_any_depth(raw, field):
    with pytest.raises(ev.EventError) as e:
        ev.validate_body(ev.loads(raw))
    if field:
        assert e.value.field == field
    else:
        assert e.value.field.startswith("data.deep[0]") and "nested deeper" in e.value.message


@pytest.mark.parametrize("raw", [b'{"type":"x","data":{"n":NaN}}', b'{"type":"x","data":{"n":-Infinity}}',
                                 b'{"type":"x","data":{"t":"\xed\xa0\x80"}}'])
def test_nan_infinity_and_encoded_surrogates_are_malformed_bodies(raw):
    with pytest.raises(ev.EventError) as e:
        ev.loads(raw)
    assert e.value.field == "body"


def test_bounded_numbers_paired_surrogates_and_32_levels_are_accepted():
    body = ev.loads(b'{"type":"x","data":{"n":1e15,"m":-1000000000000000,"f":0.5,"e":"\\ud83d\\ude00",'
                    b'"d":' + b"[" * 31 + b"]" * 31 + b"}}")
    (d,) = ev.validate_body(body)
    assert d.data["e"] == "😀" and d.data["n"] == 1e15


def test_dumps_refuses_nan_and_infinity():
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError):
            ev.dumps({"x": bad})


@pytest.mark.parametrize("line", [b"5", b"\x00\xff\xfe", b'{"id":"1-1","type":"a","run":"r","data":[]}',
                                  b'{"id":"1-1","type":"a","run":"r","data":{"x":Infinity}}',
                                  b'{"id":"1-1","type":"a","run":"r","data":{"x":1e999}}',
                                  b'{"type":"a","run":"r","data":{}}', b'{"id":"1-1","ty'])
def test_a_stored_line_that_is_not_a_sound_event_reads_as_none(line):
    assert ev.parse_stored(line) is None


def test_a_sound_stored_event_reads_back():
    assert ev.parse_stored(b'{"id":"1-2","type":"a","run":"r","ts":1.5,"data":{"k":[1]}}')["data"] == {"k": [1]}
