"""loopstream.client.follow.Follower (what `loop watch` does with each frame) against the table of cases that
dashboard/connection.js is run against too (tests/js/follower_table.test.mjs)."""
import json

import pytest

from conftest import ROOT, free_port
from loopstream.client.follow import Follower

TABLE = json.loads((ROOT / "tests" / "fixtures" / "tables" / "follower_cases.json").read_text())["cases"]


@pytest.mark.parametrize("case", TABLE, ids=[c["name"] for c in TABLE])
def test_follower_reads_frames_as_the_dashboard_does(case):
    applied, snapshots, polled = [], [], []
    pages = list(case.get("polls", []))

    def poll(since):
        polled.append(since)
        expected = pages.pop(0)
        assert since == expected["since"]
        return expected["page"]

    follower = Follower(on_event=lambda e: applied.append(e["id"]),
                        on_snapshots=lambda runs, reason: snapshots.append(
                            {"runs": [r["run"] for r in runs], "reason": reason}),
                        poll=poll)
    for frame in case["frames"]:
        follower.feed(frame.get("id"), frame["event"], frame["data"])
    assert applied == case["applied"]
    assert snapshots == case["snapshots"]
    assert polled == case["polled"]
    assert follower.cursor == case["cursor"]
    assert pages == []


def test_a_sidecar_error_carries_its_http_status(server):
    from loopstream.client.http import SidecarError, request

    with pytest.raises(SidecarError) as missing:
        request("GET", f"{server.url}/api/runs/no-such-run")
    assert missing.value.status == 404 and str(missing.value).startswith("404 from ")
    with pytest.raises(SidecarError) as unreachable:
        request("GET", f"http://127.0.0.1:{free_port()}/healthz", timeout=2)
    assert unreachable.value.status is None
