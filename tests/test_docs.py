"""The docs say what the code does: every crdtctl and crdtd command they quote parses,
every message they quote is one the code prints, every log event in the events table is
logged at its level with its fields, every config key they name exists, and the
package's dependencies are the ones they list.

Sources: README.md, docs/*.md (code spans and fenced blocks) and packaging/man (roff,
read as text). A quoted message may elide a part with ``...``; each part left must then
be a piece of one message of the code. In a message, where the code puts a value (an
f-string field), the docs may put one word, an OS error text, or another of the code's
messages.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import functools
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtd.cli.main import UsageError, _command_index, seed_syntax
from crdtd.cli.main import build_parser as crdtctl_parser
from crdtd.daemon.config import Config, load_config
from crdtd.daemon.main import build_parser as crdtd_parser

REPO = Path(__file__).resolve().parents[1]
MARKDOWN = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAN_PAGES = sorted((REPO / "packaging" / "man").glob("*.[0-9]"))
FIELD = "\x00"  # where a code string has an f-string field


# --- reading the docs -------------------------------------------------------------


def _markdown_blocks(text: str) -> Iterator[tuple[str, str]]:
    """``(language, line)`` for each line of each fenced block, and ``("span", text)``
    for each inline code span outside them."""
    language = None
    prose: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("```"):  # fences may be indented in a list
            language = line.strip()[3:].strip() or "plain" if language is None else None
            continue
        if language is not None:
            yield language, line
        else:
            prose.append(line)
    # A span may wrap onto the next line: read the prose as one string.
    for span in re.findall(r"`([^`]+)`", " ".join(prose)):
        yield "span", re.sub(r"\s+", " ", span).strip()


@functools.cache
def markdown() -> list[tuple[Path, str, str]]:
    return [
        (path, kind, text) for path in MARKDOWN for kind, text in _markdown_blocks(path.read_text())
    ]


def _roff_text(line: str) -> str:
    """A roff line as the reader sees it (fonts and macros gone)."""
    line = re.sub(r"\\f[BIRP]", "", line).replace("\\-", "-").replace("\\(em", "-")
    line = re.sub(r"^\.(B|I|BI|BR|IR|RB|IB)\s+", "", line)
    return line.replace('"', "")


def man_sections(path: Path) -> dict[str, list[str]]:
    """Each ``.SH`` section's ``.TP`` tags (the line after ``.TP``), as text."""
    sections: dict[str, list[str]] = {}
    lines = path.read_text().splitlines()
    section = ""
    for index, line in enumerate(lines):
        if line.startswith(".SH "):
            section = line[4:].strip()
            sections[section] = []
        elif line == ".TP" and index + 1 < len(lines):
            sections[section].append(_roff_text(lines[index + 1]))
    return sections


def man_examples(path: Path) -> list[str]:
    """The lines of the ``.nf`` blocks, as text."""
    examples, inside = [], False
    for line in path.read_text().splitlines():
        if line in (".nf", ".fi"):
            inside = line == ".nf"
        elif inside:
            examples.append(_roff_text(line))
    return examples


# --- commands ---------------------------------------------------------------------

# What a command in the docs may be written after, and where it ends.
_PREFIX = re.compile(r"^(?:\$\s+)?(?:sudo\s+(?:-u\s+\S+\s+)?)?(?:[A-Z_]+=\S+\s+)*")
_END = re.compile(r"\s(?:#|\||>|2>)(?:\s|$)|\)$")
# Placeholders the docs use for an argument, with a value that parses.
_PLACEHOLDERS = {"PATH": "/etc/crdtd/x", "FILE": "/etc/crdtd/x.yaml", "VAR": "x", "S": "5"}


def quoted_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for each crdtctl or crdtd command line the docs show."""
    found = []
    lines = [
        (f"{path.name} {kind}", text)
        for path, kind, text in markdown()
        # In a console block only what follows a prompt is a command; the rest is output.
        if kind != "console" or text.startswith("$ ")
    ]
    for path in MAN_PAGES:
        lines += [(path.name, text) for text in man_examples(path)]
    for where, text in lines:
        for segment in re.split(r";|&&|\|\|", text):
            command = _PREFIX.sub("", segment.strip())
            command = _END.split(command, maxsplit=1)[0].strip()
            words = command.split()
            if len(words) < 2 or words[0] not in ("crdtctl", "crdtd"):
                continue  # prose naming the program, or another program
            if re.search(r"\[|COMMAND|\.\.\.", command):
                continue  # a synopsis, not a command
            found.append((where, command))
    return found


def parse_crdtctl(words: list[str]) -> argparse.Namespace:
    return crdtctl_parser().parse_args(seed_syntax(words, _command_index(words)))


def parse_crdtd(words: list[str]) -> argparse.Namespace:
    try:
        return crdtd_parser().parse_args(words)
    except SystemExit as error:  # argparse's way to refuse
        raise UsageError(f"crdtd refuses {words}") from error


@pytest.mark.parametrize(("where", "command"), quoted_commands())
def test_every_quoted_command_parses(where: str, command: str) -> None:
    program, *words = shlex.split(command)
    words = [_PLACEHOLDERS.get(word, word) for word in words]
    if words in (["--help"], ["-h"], ["--version"]):
        return  # they exit on purpose
    parser = crdtctl_parser() if program == "crdtctl" else crdtd_parser()
    if "span" in where and all(word.startswith("-") for word in words):
        assert set(words) <= _options(parser), f"{program} has no option {words}"
        return  # prose naming an option: `crdtctl --json` prints...
    if len(words) == 1 and "span" in where:
        assert words[0] in _subcommands(parser), f"{program} has no command {words[0]}"
        return  # prose naming a command: `crdtctl add` names each add...
    (parse_crdtctl if program == "crdtctl" else parse_crdtd)(words)


def test_commands_are_found_in_every_kind_of_source() -> None:
    """Guards the extraction itself: it must see fenced blocks, spans and man pages."""
    wheres = {where.split()[0] for where, _ in quoted_commands()}
    assert {"README.md", "operations.md", "crdtctl.1"} <= wheres


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_crdtctl_man_page_lists_exactly_the_commands_and_their_options() -> None:
    sections = man_sections(REPO / "packaging" / "man" / "crdtctl.1")
    commands = _subcommands(crdtctl_parser())
    documented = {}
    for tag in sections["COMMANDS"]:
        name, *rest = tag.split()
        documented[name] = [word for word in rest if word.startswith("--")]
    assert set(documented) == set(commands)
    for name, options in documented.items():
        assert set(options) <= _options(commands[name]), name
    for tag in sections["OPTIONS"]:
        assert set(re.findall(r"--?[a-z][a-z-]*", tag)) <= _options(crdtctl_parser()), tag


def test_crdtd_man_page_lists_exactly_the_options_and_commands() -> None:
    sections = man_sections(REPO / "packaging" / "man" / "crdtd.8")
    parser = crdtd_parser()
    options = {o for tag in sections["OPTIONS"] for o in re.findall(r"--?[a-z][a-z-]*", tag)}
    assert options == _options(parser)
    named = {tag.split()[0] for tag in sections["OPTIONS"] if not tag.startswith("-")}
    assert named == set(_subcommands(parser))


# --- messages ---------------------------------------------------------------------


def _strings(node: ast.AST) -> Iterator[str]:
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            yield child.value
        elif isinstance(child, ast.JoinedStr):
            yield "".join(
                part.value if isinstance(part, ast.Constant) else FIELD for part in child.values
            )


@functools.cache
def code_strings() -> tuple[str, ...]:
    """Every string literal of crdtd/, f-string fields marked `FIELD`."""
    found: set[str] = set()
    for path in (REPO / "crdtd").rglob("*.py"):
        found.update(_strings(ast.parse(path.read_text())))
    # Adjacent fields are one field to the docs (and would make the regex backtrack).
    found = {re.sub(f"{FIELD}+", FIELD, s) for s in found}
    return tuple(sorted(s for s in found if s.strip(FIELD + " ")))


@functools.cache
def os_errors() -> frozenset[str]:
    """What ``strerror`` may print, since the code prints it for OS errors."""
    return frozenset(os.strerror(code) for code in errno.errorcode)


def _pattern(code: str) -> str:
    return "(.+?)".join(re.escape(part) for part in code.split(FIELD))


@functools.cache
def _fields_free() -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(_pattern(code)) for code in code_strings())


def _fills(value: str, depth: int) -> bool:
    """Whether the docs may show *value* where the code has a field: a word, an OS
    error's text, or (*depth* levels deep) a message of the code itself."""
    if not re.search(r"\s", value) or value in os_errors():
        return True
    return depth > 0 and any(
        _fits(value, code, depth - 1) for code in code_strings() if _literal(code) >= 2
    )


def _in_order(text: str, code: str) -> bool:
    """The code's text parts occur in *text* in order: cheap, and it spares the regex
    (whose fields could otherwise backtrack for long) every string that cannot fit."""
    at = 0
    for part in code.split(FIELD):
        at = text.find(part, at)
        if at < 0:
            return False
        at += len(part)
    return True


def _fits(text: str, code: str, depth: int = 2) -> bool:
    if not _in_order(text, code):
        return False
    match = re.fullmatch(_pattern(code), text, flags=re.DOTALL)
    return match is not None and all(_fills(group, depth) for group in match.groups())


def _fits_a_piece(text: str, code: str) -> bool:
    """*text* is a contiguous piece of a message made from *code*."""
    if FIELD not in code:
        return text in code
    # The piece starts and ends in the code's text or at one of its fields.
    fields = [i for i, char in enumerate(code) if char == FIELD]
    starts = [m.start() for m in re.finditer(re.escape(text[:4]), code)] + fields
    ends = [m.end() for m in re.finditer(re.escape(text[-4:]), code)] + [i + 1 for i in fields]
    return any(
        _fits(text, code[start:end])
        for start in starts
        for end in ends
        if end > start and _literal(code[start:end]) >= 4
    )


def _literal(code: str) -> int:
    return len(code.replace(FIELD, ""))


def is_a_message_of_the_code(message: str) -> bool:
    """*message* fits one string of the code; with ``...``, each part left fits a piece
    of one (a piece with some of the code's own text in it, not only a field)."""
    candidates = [code for code in code_strings() if _literal(code) >= 6]
    pieces = [piece.strip(" ,:") for piece in message.split("...")]
    if len(pieces) == 1:
        return any(_fits(message, code) for code in candidates)
    return all(not piece or any(_fits_a_piece(piece, c) for c in candidates) for piece in pieces)


def _unprefixed(message: str) -> str:
    """The message without crdtctl's prefix and the command it names (which must be
    one of crdtctl's): crdtctl prints ``crdtctl: COMMAND: MESSAGE``."""
    if not message.startswith("crdtctl: "):
        return message
    command, colon, after = message.removeprefix("crdtctl: ").partition(": ")
    assert colon and command in _subcommands(crdtctl_parser()), message
    return after


def quoted_messages() -> list[tuple[str, str]]:
    """Messages the docs quote: a line of a ``text`` block, or a code span, that starts
    with ``crdtctl: `` or ``crdtd: `` (or ``... `` after one)."""
    found = []
    for path, kind, text in markdown():
        text = text.strip()
        if kind in ("text", "span") and text.startswith(("crdtctl: ", "crdtd: ", "... ")):
            found.append((path.name, text))
    return found


@pytest.mark.parametrize(("where", "message"), quoted_messages())
def test_every_quoted_message_is_one_the_code_prints(where: str, message: str) -> None:
    assert is_a_message_of_the_code(_unprefixed(message)), message


def test_the_message_check_is_strict() -> None:
    reach = "cannot reach crdtd at /run/x.sock: "
    assert is_a_message_of_the_code(
        reach + "permission denied (is this user in the socket's group?)"
    )
    assert not is_a_message_of_the_code(reach + "the daemon is asleep")
    assert not is_a_message_of_the_code("cannot reach crdtd ... the daemon has left the building")
    assert not is_a_message_of_the_code("... No such file or directory")
    assert is_a_message_of_the_code(
        "crdtd: x.yaml:3: network.port: expected an integer 1..65535, got 0"
    )
    assert quoted_messages(), "the extraction found nothing"


# --- log events -------------------------------------------------------------------

_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


@dataclasses.dataclass(frozen=True)
class LogCall:
    name: re.Pattern[str]
    level: str
    fields: frozenset[str]
    any_fields: bool  # the call passes **fields


@functools.cache
def log_calls() -> tuple[LogCall, ...]:
    calls = []
    for path in (REPO / "crdtd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LOG_METHODS
                and node.args
            ):
                continue
            first = node.args[0]
            if not isinstance(first, ast.Constant | ast.JoinedStr):
                continue
            name = next(_strings(first))  # ast.walk gives the node itself first
            if not re.fullmatch(rf"[a-z_{FIELD}]+", name):
                continue
            calls.append(
                LogCall(
                    re.compile(name.replace(FIELD, "[a-z_]+")),
                    "error" if node.func.attr == "exception" else node.func.attr,
                    frozenset(k.arg for k in node.keywords if k.arg is not None),
                    any(k.arg is None for k in node.keywords),
                )
            )
    return tuple(calls)


def events_table() -> list[tuple[str, str, set[str]]]:
    """``(event, level, fields)`` of each row of operations.md's events table."""
    rows = []
    for line in (REPO / "docs" / "operations.md").read_text().splitlines():
        match = re.match(r"\| `([a-z_]+)` \| (debug|info|warning|error) \|([^|]*)\|", line)
        if match:
            rows.append((match[1], match[2], set(re.findall(r"`([a-z_]+)`", match[3]))))
    return rows


@pytest.mark.parametrize(("event", "level", "fields"), events_table())
def test_every_documented_event_is_logged_at_its_level_with_its_fields(
    event: str, level: str, fields: set[str]
) -> None:
    calls = [call for call in log_calls() if call.name.fullmatch(event)]
    assert calls, f"nothing logs {event}"
    assert any(call.level == level for call in calls), (event, [c.level for c in calls])
    assert any(call.any_fields or fields <= call.fields for call in calls), (
        event,
        fields,
        [sorted(call.fields) for call in calls],
    )


def test_the_events_table_and_the_man_page_name_the_same_events() -> None:
    documented = {event for event, _, _ in events_table()}
    assert len(documented) >= 15
    man = (REPO / "packaging" / "man" / "crdtd.8").read_text()
    logging = _roff_text(man.split(".SH LOGGING", 1)[1].split(".SH", 1)[0])
    named = set(re.findall(r"[a-z_]+", logging.split("The events are", 1)[1])) - {"and"}
    assert named == documented


# --- config keys ------------------------------------------------------------------


def schema_keys() -> set[str]:
    return {
        f"{section.name}.{key.name}"
        for section in dataclasses.fields(Config)
        for key in dataclasses.fields(section.metadata["section"])
    }


_SECTIONS = "|".join(section.name for section in dataclasses.fields(Config))


def test_every_config_key_the_docs_name_exists() -> None:
    named = set()
    for _, kind, text in markdown():
        if kind == "span" and (match := re.fullmatch(rf"({_SECTIONS})\.(\w+)(?::.*)?", text)):
            named.add(f"{match[1]}.{match[2]}")
    assert named and named <= schema_keys(), named - schema_keys()


def test_the_config_table_lists_every_key_and_its_default() -> None:
    table = {}
    for line in (REPO / "docs" / "operations.md").read_text().splitlines():
        if match := re.match(r"\| `([a-z_]+\.[a-z_]+)` \| `([^`]*)` \|", line):
            table[match[1]] = match[2]
    assert set(table) == schema_keys()
    example = load_config(REPO / "config" / "crdtd.yaml")
    assert example == Config(), "config/crdtd.yaml sets every key to its default"
    text = (REPO / "config" / "crdtd.yaml").read_text()
    for key, default in table.items():
        section, name = key.split(".")
        assert re.search(rf"^{section}:\n(?:(?:  .*|#.*|)\n)*?  {name}: ", text, re.M), key
        shown = re.search(rf"^  {name}: (.*)$", text.split(f"\n{section}:\n", 1)[1], re.M)
        assert shown and shown[1] == default, (key, default)


# --- the package's dependencies ---------------------------------------------------


def _debian_name(requirement: str) -> str:
    """The Debian package of a Python requirement, by Debian's naming policy."""
    name = re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
    return f"python3-{ {'pyyaml': 'yaml'}.get(name, name) }"


def test_the_docs_list_the_packages_the_package_depends_on() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {_debian_name(requirement) for requirement in project["dependencies"]}
    control = (REPO / "packaging" / "debian" / "control").read_text()
    build = set(re.findall(r"(python3-[a-z0-9-]+) <!nocheck>", control))
    assert runtime == build, "debian/control builds and tests with the same packages"
    operations = (REPO / "docs" / "operations.md").read_text()
    sentence = re.search(r"depends only on [^:]*:([^;]*);", operations)
    assert sentence is not None
    assert set(re.findall(r"`(python3-[a-z0-9-]+)`", sentence[1])) == runtime


def test_no_event_field_is_named_like_a_field_of_every_line() -> None:
    """``level`` and the rest are every line's own (`crdtd.daemon.logs`): a field of that
    name is overwritten (config_reloaded's ``level`` was), so neither code nor docs use one."""
    common = {"timestamp", "level", "event", "node_id"}
    for call in log_calls():
        assert not call.fields & common, (call.name.pattern, call.fields & common)
    for event, _, fields in events_table():
        assert not fields & common, (event, fields & common)
