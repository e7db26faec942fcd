"""Build a core command from request data at an edge, answering a partner's bad input with 422.

A route that assembles a command from its path and body validates twice (the body model, then the
command's own constraints). A failure of the second is still the caller's mistake, never a 500.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hub.errors import Issue, ValidationFailed

C = TypeVar("C", bound=BaseModel)


def command(model: type[C], **data: Any) -> C:
    try:
        return model(**data)
    except ValidationError as exc:
        issues = [Issue(str(e["msg"]), ".".join(str(p) for p in e["loc"]) or None) for e in exc.errors()]
        raise ValidationFailed(f"the request is not a valid {model.__name__}", issues) from None
