"""JSON logs carry the event being handled; liveness follows the poll loop's heartbeat."""

from __future__ import annotations

import json
import logging
import sys
import time

from revsync.runtime.observability import JsonFormatter, Liveness, event_context


def test_log_lines_are_json_with_correlation_and_event_ids() -> None:
    record = logging.LogRecord(
        "revsync.runtime",
        logging.WARNING,
        __file__,
        1,
        "order %s held",
        ("8015g0000ORDERKEY1",),
        None,
    )
    with event_context("corr-42", "6f1c0d6e-1b2a-4c3d-9e8f-7a6b5c4d3e2f"):
        line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "order 8015g0000ORDERKEY1 held"
    assert line["level"] == "WARNING"
    assert line["correlation_id"] == "corr-42"
    assert line["event_id"] == "6f1c0d6e-1b2a-4c3d-9e8f-7a6b5c4d3e2f"
    outside = json.loads(JsonFormatter().format(record))
    assert outside["correlation_id"] is None


def test_a_logged_exception_keeps_its_frames_and_type_but_not_the_data_its_text_quotes() -> None:
    """No customer data in errors: ``log.exception`` as a service's last word on a crash."""
    email = "ap@acme.example"
    try:
        int(email)
    except ValueError:
        record = logging.LogRecord(
            "revsync.run", logging.ERROR, __file__, 1, "relay failed", (), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert "builtins.ValueError: ValueError" in line["exception"]
    assert __file__ in line["exception"]
    assert "ap@acme.example" not in json.dumps(line)


def test_liveness_fails_when_the_loop_stops_beating() -> None:
    liveness = Liveness(timeout_s=0.05)
    assert liveness.alive()
    time.sleep(0.1)
    assert not liveness.alive()
    liveness.beat()
    assert liveness.alive()
