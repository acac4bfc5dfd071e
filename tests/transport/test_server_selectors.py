"""The same server behaviour on the ``selectors`` fallback loop (PollSelector, no epoll).

Tests imported here run again in this module, where the ``loop_kind`` fixture is
overridden (uvloop's mixin idea: one behaviour suite, two loops).
"""

from __future__ import annotations

import pytest
from test_server_calls import (  # noqa: F401 - imported to run again under this loop
    test_basic_calls_and_introspection,
    test_blocking_handler_does_not_stall_others,
    test_errors_keep_the_connection_usable,
    test_graceful_stop_finishes_inflight_calls,
    test_large_payload_roundtrip,
    test_out_of_order_replies,
    test_ten_thousand_pipelined_calls,
)
from test_server_hostile import (  # noqa: F401
    echo_server,
    test_bad_header_gets_goaway_then_close,
    test_client_that_never_reads_is_capped_and_closed,
    test_keepalive_drops_a_peer_that_never_answers,
    test_non_native_bytes_are_refused_at_once,
    test_silent_connection_closed_by_handshake_deadline,
    test_slowloris_header_closed_by_frame_deadline,
    test_ten_thousand_pipelined_frames_in_one_write,
)


@pytest.fixture
def loop_kind() -> str:
    """Every test in this module runs on the selectors loop."""
    return "selectors"


def test_the_fallback_loop_is_really_used(make_server) -> None:
    server = make_server()
    assert server._loop.poller_kind == "selectors"
