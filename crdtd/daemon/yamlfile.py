"""Reading a YAML file that a person wrote, so that every error names its file and line.

Shared by the config loader (`crdtd.daemon.config`) and the key file loader
(`crdtd.daemon.keys`).

Rules:
- every error is one line; content errors are ``FILE:LINE: dotted.key: expected WHAT,
  got FOUND`` (FILE as given), where LINE is the line of the offending value (of the key,
  for an unknown or repeated key); errors about the file as a whole are ``FILE: ...``;
- an unknown or repeated key is an error, so a typo never silently becomes a default;
- each error is raised as the caller's subclass of `ConfigError`.

Theory of operation: the text is composed into a YAML node tree (which keeps line
numbers) rather than loaded into plain dicts (which lose them); a caller walks the tree
and constructs each scalar with PyYAML's safe constructor (`YamlFile.construct`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import yaml


class ConfigError(Exception):
    """A file cannot be used; the message names file, line, key and the fix."""


def read_text(path: Path, error: type[ConfigError] = ConfigError) -> str:
    """The file's text, or raise *error* saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as problem:
        raise error(f"{path}: cannot read: {problem.strerror}") from None
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text: {problem.reason}") from None


class YamlFile:
    """One file's node tree, and the errors that point into it."""

    def __init__(self, file: str, error: type[ConfigError] = ConfigError) -> None:
        self.file = file
        self.error = error
        self._constructor = yaml.constructor.SafeConstructor()

    def compose(self, text: str) -> yaml.Node | None:
        """The node tree of *text*; None for an empty (or comment-only) file."""
        try:
            node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as problem:
            mark = problem.problem_mark or problem.context_mark
            where = f":{mark.line + 1}" if mark is not None else ""
            # The context completes some problems: "expected a single document in the
            # stream, but found another document".
            what = ", ".join(part for part in (problem.context, problem.problem) if part)
            raise self.error(f"{self.file}{where}: invalid YAML: {what}") from None
        except yaml.reader.ReaderError as problem:
            # Raised before any mark exists; for text input, character is a code point.
            line = text.count("\n", 0, problem.position) + 1
            raise self.error(
                f"{self.file}:{line}: invalid YAML: "
                f"non-printable character U+{problem.character:04X} not allowed"
            ) from None
        return node

    def items(
        self, node: yaml.MappingNode, path: str, known: Sequence[str]
    ) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """``(key, key node, value node)`` for each key of *node*, in file order; an
        unknown or repeated key is an error when it is reached. *path* is the mapping's
        dotted path ("" at the top level)."""
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, path or "top level", "a key name")
            # The key's source text: YAML would read a key such as `on` as a boolean.
            key = str(key_node.value)
            key_path = f"{path}.{key}" if path else key
            if key not in known:
                raise self.error(
                    f"{self.file}:{line(key_node)}: {key_path}: unknown key; "
                    f"expected one of: {', '.join(known)}"
                )
            if key in seen:
                raise self.error(f"{self.file}:{line(key_node)}: {key_path}: key given twice")
            seen.add(key)
            yield key, key_node, value_node

    def construct(self, node: yaml.Node) -> object:
        """The Python value of a scalar node; raises ``yaml.YAMLError`` for a tag the safe
        constructor refuses, or ``!!int abc``."""
        return self._constructor.construct_object(node)

    def fail(self, node: yaml.Node, path: str, expected: str, found: str | None = None) -> NoReturn:
        """Raise the one-line error ``FILE:LINE: path: expected ..., got ...``.

        *found* replaces the description of the value as written: pass one when the value
        must not be shown (a secret)."""
        raise self.error(
            f"{self.file}:{line(node)}: {path}: expected {expected}, "
            f"got {found if found is not None else describe(node)}"
        )


def line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def tag(node: yaml.Node) -> str:
    """The short tag of a resolved node: ``str``, ``int``, ``bool``, ``null``, ``map``..."""
    return str(node.tag).rsplit(":", 1)[-1]


_KIND = {"bool": "a boolean", "timestamp": "a date", "binary": "binary data"}


def describe(node: yaml.Node) -> str:
    """A value as the user wrote it, with its YAML type when that may surprise."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = tag(node)
    if kind == "str":
        return repr(node.value)
    if kind == "null":
        return "null"
    if kind in ("int", "float"):
        return str(node.value)
    return f"{node.value} ({_KIND.get(kind, 'tagged ' + str(node.tag))})"


def describe_kind(node: yaml.Node) -> str:
    """What sort of value *node* is, without showing the value."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = tag(node)
    return {
        "str": "a string",
        "null": "null",
        "int": "a number",
        "float": "a number",
    }.get(kind, _KIND.get(kind, f"a value tagged {node.tag}"))
