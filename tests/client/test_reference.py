"""docs/control.md's reference of crdtd.client is rendered from the docstrings; this
test fails when they part. Regenerate the section with::

    .venv/bin/python tests/client/test_reference.py
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import crdtd.client

DOC = Path(__file__).parents[2] / "docs" / "control.md"
SECTION = re.compile(
    r"(<!-- client-reference[^\n]*-->\n)(.*?)(<!-- end client-reference -->)", re.S
)
REEXPORTED = {"ControlError", "DaemonUnreachable"}  # documented where they are defined


def _first_line(thing: object) -> str:
    """The docstring's first paragraph, on one line."""
    doc = inspect.getdoc(thing)
    assert doc, f"{thing!r} has no docstring"
    return " ".join(doc.split("\n\n")[0].split())


def _signature(thing: Any) -> str:
    """The parameters as a caller writes them: no annotations, no ``self``."""
    signature = inspect.signature(thing)
    parameters = [
        parameter.replace(annotation=inspect.Parameter.empty)
        for parameter in signature.parameters.values()
        if parameter.name != "self"
    ]
    plain = signature.replace(parameters=parameters, return_annotation=inspect.Parameter.empty)
    return str(plain)


def _public_methods(cls: type) -> list[str]:
    return [
        name
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member)
    ]


def render() -> str:
    lines = []
    for name in crdtd.client.__all__:
        if name in REEXPORTED:
            continue
        thing = getattr(crdtd.client, name)
        if inspect.isclass(thing) and name.endswith("Client"):
            lines.append(f"- `{name}{_signature(thing)}`: {_first_line(thing)}")
            for method in _public_methods(thing):
                member = getattr(thing, method)
                lines.append(f"  - `{method}{_signature(member)}`: {_first_line(member)}")
        elif inspect.isclass(thing):
            fields = ", ".join(f"`{f}`" for f in thing.__dataclass_fields__)
            lines.append(f"- `{name}` ({fields}): {_first_line(thing)}")
        else:
            lines.append(f"- `{name}{_signature(thing)}`: {_first_line(thing)}")
    return "\n".join(lines) + "\n"


def test_the_client_reference_in_the_docs_matches_the_docstrings() -> None:
    found = SECTION.search(DOC.read_text())
    assert found, f"{DOC} lacks the client-reference section"
    assert found.group(2) == render(), f"run `.venv/bin/python {Path(__file__).name}`"


def test_both_clients_offer_the_same_methods() -> None:
    assert set(_public_methods(crdtd.client.Client)) == set(
        _public_methods(crdtd.client.AsyncClient)
    )


if __name__ == "__main__":
    text = DOC.read_text()
    DOC.write_text(SECTION.sub(lambda m: m.group(1) + render() + m.group(3), text, count=1))
    print(f"rendered {DOC}")
