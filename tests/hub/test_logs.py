"""The hub's log formatter: tracebacks without exception messages (they may quote PHI)."""

from __future__ import annotations

import logging

import pytest

from hub.logs import RedactingFormatter, configure
from hub.serve import uvicorn_options
from hub.settings import Settings

PHI = "Rivera-Ana-1971-03-09"


def _raise_chained() -> None:
    try:
        raise KeyError(f"patient {PHI}")
    except KeyError as exc:
        raise ValueError(f"could not map {PHI}") from exc


def _record() -> logging.LogRecord:
    try:
        _raise_chained()
    except ValueError as exc:
        return logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "message %s failed", ("m-1",), (type(exc), exc, exc.__traceback__)
        )
    raise AssertionError("unreachable")


def test_a_traceback_keeps_its_frames_and_types_but_no_message() -> None:
    text = RedactingFormatter("%(levelname)s %(message)s").format(_record())
    assert PHI not in text
    assert text.startswith("ERROR message m-1 failed\n")
    # Root cause first, as Python prints it, with the frames that raised each exception.
    key, value = text.index("builtins.KeyError"), text.index("builtins.ValueError")
    assert key < text.index("The above exception was the direct cause") < value
    assert text.count("in _raise_chained") == 2
    assert "message withheld" in text


def test_context_without_cause_is_kept_and_a_cycle_ends() -> None:
    try:
        try:
            raise OSError(PHI)
        except OSError:
            raise RuntimeError(PHI) from None
    except RuntimeError as exc:
        suppressed = exc
    text = RedactingFormatter().formatException((RuntimeError, suppressed, suppressed.__traceback__))
    assert "OSError" not in text
    assert PHI not in text
    assert "builtins.RuntimeError" in text
    a, b = ValueError(PHI), KeyError(PHI)
    a.__context__, b.__context__ = b, a
    text = RedactingFormatter().formatException((ValueError, a, None))
    assert "During handling of the above exception" in text
    assert PHI not in text


def test_configure_installs_the_formatter_on_a_bare_root(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    configure("INFO")
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, RedactingFormatter)
    assert root.level == logging.INFO


def test_uvicorn_logs_through_the_hubs_handler() -> None:
    """uvicorn's default logging config prints an unhandled request error's message."""
    assert uvicorn_options(Settings())["log_config"] is None


def test_alembic_set_up_chatter_stays_out_of_the_operators_log() -> None:
    """serve logged a dozen alembic INFO lines at start-up and two on every /readyz."""
    root, alembic = logging.getLogger(), logging.getLogger("alembic")
    levels = root.level, alembic.level
    root.setLevel(logging.INFO)  # as serve runs (pytest's own root level would hide the difference)
    try:
        configure("INFO")
        assert not logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO)
        assert logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.WARNING)
        assert logging.getLogger("hub.serve").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(levels[0])
        alembic.setLevel(levels[1])
