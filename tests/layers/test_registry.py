"""Every registered layer type has at least one case in the tests.

A type counts as covered when some test source under ``tests/`` (a ``test_*.py`` file) spells it
as a prototxt type, ``type: "<T>"`` (quotes possibly escaped), or passes it as the first argument of
a case-builder helper whose name contains ``layer`` (``layer("PriorBox", ...)``). Add a row for a new
type to the case table of its family's test module (tests/layers/test_<family>.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from dnntool.layers import registry

TESTS = Path(__file__).resolve().parents[1]
TYPE_RE = re.compile(r'type:\s*\\?"([^"\\]+)\\?"')
HELPER_RE = re.compile(r'\b\w*layer\w*\(\s*["\']([^"\']+)["\']')


def covered_types() -> set[str]:
    found: set[str] = set()
    for path in TESTS.rglob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        found.update(TYPE_RE.findall(text))
        found.update(HELPER_RE.findall(text))
    return found


def test_every_registered_type_has_a_case():
    # built-in types only: plugins (entry points, test doubles) are registered from other packages
    types = {t: c for t, c in registry.registered().items() if c.__module__.startswith("dnntool.layers.")}
    assert len(types) > 50
    missing = sorted(set(types) - covered_types())
    hints = [f"{t} (dnntool/layers/{types[t].__module__.rsplit('.', 1)[-1]}.py: add a case row to"
             f" tests/layers/test_{types[t].__module__.rsplit('.', 1)[-1]}.py or its family's test file)"
             for t in missing]
    assert not missing, "registered layer types with no test case: " + "; ".join(hints)


def test_type_patterns():
    assert TYPE_RE.findall('layer { type: "ReLU" } "type: \\"Convolution\\""') == ["ReLU", "Convolution"]
    assert HELPER_RE.findall('x = layer("PriorBox", "p") + make_layer(\'Interp\')') == ["PriorBox", "Interp"]
