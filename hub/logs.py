"""Logging that cannot print PHI through an exception.

An exception's message often quotes what a partner sent: pydantic repeats the input value
(``input_value='Rivera-Ana-1971-…'``), SQLAlchemy prints a statement's parameters (a patient's
name, MRN, birth date), a parser quotes the offending field. A plain ``logging`` traceback ends
with that message. So the hub's log formatter prints a traceback as its frames (file, line,
function, the source line: code, never data) and, for each exception in the chain, only its type.
The message stays in the inbox row, the answer to the partner and the audit trail, where access is
controlled; the log gets enough to find the code path.

Every process the hub runs configures logging through :func:`configure` (the CLI, ``serve`` and
its workers), and uvicorn's own loggers are routed to the same handler (``log_config=None`` in
``hub.serve.uvicorn_options``): uvicorn logs an unhandled request error with its traceback.
"""

from __future__ import annotations

import logging
import traceback
from types import TracebackType

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def redacted_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` and of its causes and contexts, every message left out; the root
    cause first, as Python prints it."""
    text = _redacted(exc)
    seen = {id(exc)}
    current: BaseException = exc
    while True:
        if current.__cause__ is not None:
            earlier, link = current.__cause__, "The above exception was the direct cause of the following exception:"
        elif current.__context__ is not None and not current.__suppress_context__:
            earlier, link = current.__context__, "During handling of the above exception, another exception occurred:"
        else:
            return text
        if id(earlier) in seen:
            return text
        seen.add(id(earlier))
        text = f"{_redacted(earlier)}\n\n{link}\n\n{text}"
        current = earlier


def _redacted(exc: BaseException) -> str:
    frames = "".join(traceback.format_tb(exc.__traceback__))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return f"Traceback (most recent call last):\n{frames}{name}: (message withheld: may carry PHI)"


class RedactingFormatter(logging.Formatter):
    """A formatter whose tracebacks carry no exception messages (see the module's docstring)."""

    def formatException(self, ei: ExcInfo) -> str:
        exc = ei[1]
        if exc is None:
            return ""
        return redacted_traceback(exc)


def configure(level: str | int, fmt: str = "%(asctime)s %(levelname)s %(name)s %(message)s") -> None:
    """The root handler, with the redacting formatter. As ``logging.basicConfig``: nothing changes
    if the root logger already has a handler (a host application's, or pytest's)."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
    # Alembic logs its plugin set-up and migration context at INFO on every schema check (each
    # /readyz): noise that buries what an operator needs. Its warnings still show.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    # Libraries that log whole message bodies at DEBUG: with CGTHUB_LOG_LEVEL=DEBUG they would print
    # every SOAP envelope to and from the customs authority, WS-Security password included (zeep's
    # transport logs the request as sent). Their INFO and above still show.
    for name in BODY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))


# Loggers of libraries the hub uses that write message bodies (and the credentials in them) at DEBUG.
BODY_LOGGERS = ("zeep",)
