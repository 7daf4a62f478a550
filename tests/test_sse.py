from loopstream.core import sse


def test_frame_has_id_event_and_data_and_ends_with_a_blank_line():
    assert sse.frame("1-2", "output", '{"a":1}') == b'id: 1-2\nevent: output\ndata: {"a":1}\n\n'


def test_retry_and_comment():
    assert sse.retry(2500) == b"retry: 2500\n\n"
    assert sse.comment("ping") == b": ping\n\n"
