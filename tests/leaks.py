"""What the tests of "no customer data in errors" share: everything a dead letter's headers
or a log line keep of an error."""

from __future__ import annotations

import traceback


def told(error: BaseException) -> str:
    """The text of ``error`` and of every exception chained to it, as its traceback prints
    them: what a failure header or a log line keeps of it besides code (the frames' source
    lines, left out here because a test's own lines quote the values it sends)."""
    lines: list[str] = []
    shown: traceback.TracebackException | None = traceback.TracebackException.from_exception(error)
    while shown is not None:
        lines += shown.format_exception_only()
        shown = shown.__cause__ or (None if shown.__suppress_context__ else shown.__context__)
    return "".join(lines)
