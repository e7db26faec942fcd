"""Build a core command from request data at an edge, answering a partner's bad input with 422.

A route that assembles a command from its path and body validates twice (the body model, then the
command's own constraints). A failure of the second is still the caller's mistake, never a 500.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hub.errors import Issue, ValidationFailed

C = TypeVar("C", bound=BaseModel)


def command(model: type[C], *, where: dict[str, str] | None = None, **data: Any) -> C:
    """``where`` names, per top-level field, where the caller put the value (a FHIRPath for FHIR
    callers); other issues are located by the command's field path."""
    try:
        return model(**data)
    except ValidationError as exc:
        issues = []
        for e in exc.errors():
            path = ".".join(str(p) for p in e["loc"])
            top = str(e["loc"][0]) if e["loc"] else ""
            issues.append(Issue(str(e["msg"]), (where or {}).get(top, path) or None))
        raise ValidationFailed(f"the request is not a valid {model.__name__}", issues) from None
