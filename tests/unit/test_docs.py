"""A documented hook signature is a promise: docs/plugins.md must show each hook exactly, and
each hook's docstring must say when it runs and what an exception in it does, as its kind's
calling rule makes it happen."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from lockgate.plugins import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"

# What a hook's docstring must say an exception does, by the kind of hook (hookspecs' tuples);
# tests/unit/test_plugin_manager.py checks that the manager does exactly that.
RULES = {
    "LIFECYCLE": "marks the plugin as failed",
    "PROVIDERS": "exception propagates",
    "GATEKEEPERS": "counts as a deny",
    "RECORDERS": "withholds the answer",
    "OBSERVERS": "logged and counted",
}


def signature(fn) -> str:
    params = ", ".join(f"{name}: {fn.__annotations__[name]}" for name in inspect.signature(fn).parameters)
    return f"def {fn.__name__}({params}) -> {fn.__annotations__['return']}"


def hooks():
    return [fn for name, fn in vars(hookspecs).items() if name.startswith("lockgate_") and hasattr(fn, "lockgate_spec")]


def test_every_hook_is_documented_with_its_exact_signature():
    text = DOC.read_text()
    found = hooks()
    assert {fn.__name__ for fn in found} == set(hookspecs.__all__) - set(RULES)  # every hookspec is exported
    missing = [signature(fn) for fn in found if signature(fn) not in text]
    assert not missing, "docs/plugins.md lacks:\n" + "\n".join(missing)


def test_every_hook_has_exactly_one_kind_and_its_docstring_states_that_kinds_exception_rule():
    kinds = {name: kind for kind in RULES for name in getattr(hookspecs, kind)}
    assert sum(len(getattr(hookspecs, kind)) for kind in RULES) == len(kinds), "a hook is listed under two kinds"
    for fn in hooks():
        assert fn.__name__ in kinds, f"{fn.__name__} is in none of {', '.join(RULES)}"
        doc = " ".join((inspect.getdoc(fn) or "").split())
        assert RULES[kinds[fn.__name__]] in doc, f"{fn.__name__}'s docstring does not say: {RULES[kinds[fn.__name__]]}"
        assert re.search(r"\b(Called|Runs|runs|called)\b", doc), f"{fn.__name__}'s docstring does not say when it runs"


def test_every_hook_sits_in_the_docs_calling_rules_row_of_its_kind():
    table = DOC.read_text().split("## Calling rules", 1)[1].split("## Hooks", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ") and "`lockgate_" in line}
    by_kind = {
        "LIFECYCLE": "lifecycle",
        "PROVIDERS": "providers",
        "GATEKEEPERS": "gatekeepers",
        "RECORDERS": "recorders",
        "OBSERVERS": "observers",
    }
    for kind, row_name in by_kind.items():
        for name in getattr(hookspecs, kind):
            assert f"`{name}`" in rows[row_name], f"docs/plugins.md's {row_name} row lacks {name}"
