"""The cluster key file (``security.key_file``): named secrets that authenticate datagrams.

The file::

    keys:
      - id: k2026a
        secret: <base64 of at least 32 random bytes>   # head -c 32 /dev/urandom | base64

Rules:
- at least one key, at most `KEYS_MAX`; the first signs every datagram this node sends,
  and a datagram signed with any listed key is accepted (`crdtd.core.wire`), which is
  what lets a cluster rotate keys without a pause (``config/crdtd.yaml`` says how);
- an id is a name (1-64 characters of ``[A-Za-z0-9_.-]``), unique in the file; it goes
  on the wire in the clear. A secret is standard base64 decoding to at least
  `SECRET_BYTES_MIN` bytes;
- the file is refused unless only its owner may use it (no group or other permission
  bits: ``chmod 600``) and its owner is the daemon's user or root: anyone else could
  have written the keys, or read them;
- errors are one line naming the file (as given), and for the content the line and the
  key path (``keys[1].secret``), as the config loader's are; a secret, or any part of
  one, never appears in a message or a log.

`write_new_key_file` (``crdtd keygen PATH``) makes such a file with one fresh key. It
creates the file 0600 with ``O_CREAT | O_EXCL`` and never replaces one: a cluster's
nodes must share one key, so overwriting the key a cluster uses would cut this node
off from it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
import pwd
import secrets
import stat
from pathlib import Path

import yaml

from crdtd.core.ids import NAME_MAX, is_name
from crdtd.core.settings import Key
from crdtd.daemon.yamlfile import ConfigError, YamlFile, describe_kind, line, tag

KEYS_MAX = 16
SECRET_BYTES_MIN = 32
KEY_FILE_BYTES_MAX = 64 * 1024
NEW_SECRET_BYTES = 32

_ENTRY_KEYS = ("id", "secret")
_ENTRY = "a mapping with an id and a secret"
_ENTRIES = "a list of keys, each a mapping with an id and a secret"
_ID = f"a name of 1-{NAME_MAX} characters [A-Za-z0-9_.-] (quote one that looks like a number)"
_SECRET = f"base64 of at least {SECRET_BYTES_MIN} random bytes (head -c 32 /dev/urandom | base64)"


class KeyFileError(ConfigError):
    """The key file cannot be used; the message names the file and what to fix."""


def load_keys(path: Path) -> tuple[Key, ...]:
    """Read and check the key file at *path*; raise `KeyFileError` saying what is wrong."""
    text = _read_private(path)
    loader = YamlFile(str(path), KeyFileError)
    root = loader.compose(text)
    if root is None:
        raise KeyFileError(f"{path}: the file is empty; expected keys: {_ENTRIES}")
    if not isinstance(root, yaml.MappingNode):
        loader.fail(root, "top level", "a mapping with the key 'keys'")
    entries: yaml.Node | None = None
    for _, _, value_node in loader.items(root, "", ["keys"]):
        entries = value_node
    if entries is None:
        raise KeyFileError(f"{path}:{line(root)}: keys: missing; expected {_ENTRIES}")
    if not isinstance(entries, yaml.SequenceNode):
        loader.fail(entries, "keys", _ENTRIES)
    if not entries.value:
        loader.fail(entries, "keys", "at least one key", "an empty list")
    if len(entries.value) > KEYS_MAX:
        loader.fail(entries, "keys", f"at most {KEYS_MAX} keys", f"{len(entries.value)}")
    keys: list[Key] = []
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(entries.value):
        key = _entry(loader, entry, f"keys[{index}]")
        if key.key_id in first_seen:
            earlier = first_seen[key.key_id]
            loader.fail(
                _value_of(entry, "id"),
                f"keys[{index}].id",
                "an id used once in the file",
                f"{key.key_id!r} again (first as keys[{earlier}])",
            )
        first_seen[key.key_id] = index
        keys.append(key)
    return tuple(keys)


def new_key(today: datetime.date | None = None) -> Key:
    """A fresh key: 32 random bytes, named ``k`` + the date + a random suffix
    (``k20260314-3fa2``), so ids made for one rotation on different days never clash and
    an operator can tell an old key from a new one by its name."""
    day = today or datetime.date.today()
    return Key(f"k{day:%Y%m%d}-{secrets.token_hex(2)}", secrets.token_bytes(NEW_SECRET_BYTES))


def key_file_text(keys: tuple[Key, ...]) -> str:
    """The YAML of a key file holding *keys*, in order (the first signs)."""
    entries = "".join(
        f"  - id: {key.key_id}\n    secret: {base64.b64encode(key.secret).decode()}\n"
        for key in keys
    )
    return "keys:\n" + entries


def write_new_key_file(path: Path) -> Key:
    """Create *path* (mode 0600, refused if it exists) holding one new key; return it.

    Raises `KeyFileError` saying why the file could not be made. A file that was created
    but could not be written in full is removed, so no half key file is left behind.
    """
    today = datetime.date.today()
    key = new_key(today)
    text = (
        f"# A crdtd cluster key, made by `crdtd keygen` on {today:%Y-%m-%d}. Every node of\n"
        "# the cluster needs this same file: copy it to each (mode 0600, owned by the\n"
        "# daemon's user) and set security.key_file to its path.\n" + key_file_text((key,))
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{path}: exists already; crdtd keygen never replaces a key file (the cluster's "
            "nodes may be using it): give another path, or remove this file first"
        ) from None
    except OSError as error:
        raise KeyFileError(f"{path}: cannot create: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            os.fchmod(file.fileno(), 0o600)  # the umask may have taken bits off
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(path)
        raise
    return key


def describe_keys(keys: tuple[Key, ...]) -> dict[str, object]:
    """What may be logged or shown about *keys*: their ids and roles, never a secret."""
    return {
        "signing": keys[0].key_id if keys else None,
        "accepted": [key.key_id for key in keys],
    }


def _read_private(path: Path) -> str:
    """The file's text, once its mode and owner show nobody else could read or write it.

    The checks use the opened file (``fstat``), so the file read is the file checked.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read: {error.strerror}") from None
    try:
        _check_private(path, os.fstat(fd))
        with os.fdopen(os.dup(fd), "rb") as file:
            raw = file.read(KEY_FILE_BYTES_MAX + 1)
    finally:
        os.close(fd)
    if len(raw) > KEY_FILE_BYTES_MAX:
        raise KeyFileError(f"{path}: larger than {KEY_FILE_BYTES_MAX} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise KeyFileError(f"{path}: not UTF-8 text: {error.reason}") from None


def _check_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"{path}: expected a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: group or others may use this file (mode {mode:04o}); "
            f"only its owner may: chmod 600 {path}"
        )
    euid = os.geteuid()
    if info.st_uid not in (euid, 0):
        owners = "root" if euid == 0 else f"the daemon's user ({_user(euid)}) or root"
        raise KeyFileError(
            f"{path}: owned by {_user(info.st_uid)}, who could rewrite the keys; "
            f"expected {owners}: chown {_user(euid)} {path}"
        )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _entry(loader: YamlFile, node: yaml.Node, path: str) -> Key:
    if not isinstance(node, yaml.MappingNode):
        loader.fail(node, path, _ENTRY)
    values = {key: value for key, _, value in loader.items(node, path, _ENTRY_KEYS)}
    for name in _ENTRY_KEYS:
        if name not in values:
            raise KeyFileError(f"{loader.file}:{line(node)}: {path}: missing key {name!r}")
    return Key(
        _key_id(loader, values["id"], f"{path}.id"),
        _secret(loader, values["secret"], f"{path}.secret"),
    )


def _key_id(loader: YamlFile, node: yaml.Node, path: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        loader.fail(node, path, _ID)
    try:
        value = loader.construct(node)
    except yaml.YAMLError:
        loader.fail(node, path, _ID)
    if not is_name(value):
        loader.fail(node, path, _ID)
    assert isinstance(value, str)
    return value


def _secret(loader: YamlFile, node: yaml.Node, path: str) -> bytes:
    # The value is never shown: only its kind, or how many bytes it decodes to. The
    # source text is used as written: base64 made only of digits would resolve as a number.
    if not isinstance(node, yaml.ScalarNode) or tag(node) not in ("str", "int", "float"):
        loader.fail(node, path, _SECRET, describe_kind(node))
    text = "".join(str(node.value).split())  # a long secret may be folded over lines
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        loader.fail(node, path, _SECRET, "text that is not base64")
    if len(secret) < SECRET_BYTES_MIN:
        loader.fail(node, path, _SECRET, f"base64 of {len(secret)} bytes")
    return secret


def _value_of(entry: yaml.Node, name: str) -> yaml.Node:
    assert isinstance(entry, yaml.MappingNode)
    return next(value for key, value in entry.value if key.value == name)
