"""A documented hook signature is a promise: docs/plugins.md must show each hook exactly."""

from __future__ import annotations

import inspect
from pathlib import Path

from lockgate.plugins import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def signature(fn) -> str:
    params = ", ".join(f"{name}: {fn.__annotations__[name]}" for name in inspect.signature(fn).parameters)
    return f"def {fn.__name__}({params}) -> {fn.__annotations__['return']}"


def hooks():
    return [fn for name, fn in vars(hookspecs).items() if name.startswith("lockgate_") and hasattr(fn, "lockgate_spec")]


def test_every_hook_is_documented_with_its_exact_signature():
    text = DOC.read_text()
    found = hooks()
    assert len(found) == 12
    missing = [signature(fn) for fn in found if signature(fn) not in text]
    assert not missing, "docs/plugins.md lacks:\n" + "\n".join(missing)


def test_every_hook_has_a_docstring_saying_when_and_what_an_exception_does():
    for fn in hooks():
        doc = inspect.getdoc(fn) or ""
        assert "exception" in doc.lower() or "raise" in doc.lower(), fn.__name__
