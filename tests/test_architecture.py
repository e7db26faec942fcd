"""Tiny AST linters for the house rules (STYLE.md):

* only the unit of work commits;
* no message bodies, raw bytes, resources or names in log calls (ids and hashes only);
* hub/ never imports an adapter (the composition root ``hub/runtime.py`` excepted);
* no blocking store call on the event loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hub", "adapters", "portal")
UOW = ROOT / "hub" / "db" / "uow.py"
BLOCKING_STORE_CALLS = {"read", "reading", "run", "run_batch"}
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
PHI_NAMES = {
    "raw",
    "body",
    "payload",
    "content",
    "message_text",
    "patient",
    "family",
    "given",
    "mrn",
    "resource",
    "data",
    "text",
    "segment",
    "segments",
    "hl7",
    "envelope",
    "birth_date",
    "birthDate",
}


def _files() -> list[Path]:
    return [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "migrations" not in p.parts]


def _names(node: ast.AST) -> set[str]:
    """What a logged argument finally is: ``envelope.event_id`` is an id (fine), ``envelope`` or
    ``msg.raw.decode()`` is a body (not fine)."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Call):
        inner = node.func.value if isinstance(node.func, ast.Attribute) else node.func
        return _names(inner) | {n for a in node.args for n in _names(a)}
    if isinstance(node, ast.Subscript):
        return _names(node.value)
    if isinstance(node, ast.JoinedStr):
        return {n for v in node.values if isinstance(v, ast.FormattedValue) for n in _names(v.value)}
    return set()


def test_only_the_unit_of_work_commits() -> None:
    offenders = []
    for path in _files():
        if path == UOW:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "commit":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    # Savepoint commits (`nested.commit()`) inside Work.attempt live in uow.py too.
    assert offenders == [], f"commit() outside hub/db/uow.py: {offenders}"


def test_no_bodies_in_log_calls() -> None:
    offenders = []
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in LOG_METHODS or not isinstance(node.func.value, ast.Name):
                continue
            if node.func.value.id not in ("log", "logger", "logging"):
                continue
            for arg in node.args[1:]:
                bad = _names(arg) & PHI_NAMES
                if bad:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} logs {sorted(bad)}")
    assert offenders == [], offenders


def test_hub_does_not_import_adapters() -> None:
    offenders = []
    for path in (ROOT / "hub").rglob("*.py"):
        if path.name in ("runtime.py", "cli.py", "context.py", "demo.py"):
            continue  # composition roots and edges that assemble the application
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("adapters"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.startswith("adapters") for a in node.names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], offenders


def _runs_on_the_loop(fn: ast.AsyncFunctionDef) -> list[ast.AST]:
    """The nodes of an ``async def`` that run on the event loop: not the bodies of the functions
    and lambdas it defines (jobs handed to the committer or to a thread)."""
    nodes: list[ast.AST] = []
    todo: list[ast.AST] = list(fn.body)
    while todo:
        node = todo.pop()
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                todo.append(child)
    return nodes


def test_no_blocking_store_call_on_the_event_loop() -> None:
    """``store.read``/``run`` wait for the database; called in an ``async def`` they stop the whole
    loop (health checks, MLLP ACKs, the API) for as long as it takes, forever when it hangs. Use
    ``read_async``/``run_async`` or ``asyncio.to_thread``."""
    offenders = []
    for path in _files():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.AsyncFunctionDef):
                continue
            for node in _runs_on_the_loop(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in BLOCKING_STORE_CALLS
                    and ast.unparse(node.func.value).endswith("store")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node.func)}")
    assert offenders == [], offenders
