"""The key file loader: what it accepts, and one exact message per kind of error."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crdtd.core.settings import Key
from crdtd.daemon.config import ConfigError
from crdtd.daemon.keys import KEYS_MAX, KeyFileError, describe_keys, load_keys
from crdtd.daemon.main import make_socket_directory

SECRET_A = bytes(range(32))
SECRET_B = bytes(range(100, 148))
A64 = base64.b64encode(SECRET_A).decode()
B64 = base64.b64encode(SECRET_B).decode()
SHORT64 = base64.b64encode(bytes(31)).decode()
EXPECTED_SECRET = "expected base64 of at least 32 random bytes (head -c 32 /dev/urandom | base64)"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a key file 0600 in a fresh directory; messages then name plain `keys.yaml`."""
    monkeypatch.chdir(tmp_path)

    def write(text: str, mode: int = 0o600) -> Path:
        path = Path("keys.yaml")
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        path.chmod(mode)
        return path

    return write


def load_error(path: Path) -> str:
    with pytest.raises(KeyFileError) as caught:
        load_keys(path)
    return str(caught.value)


# What it accepts


def test_keys_load_in_file_order_and_the_first_signs(write) -> None:
    path = write(
        f"""\
        # rotation in progress: k2026b signs, k2026a is still accepted
        keys:
          - id: k2026b
            secret: {B64}
          - {{id: k2026a, secret: "{A64}"}}
        """
    )
    keys = load_keys(path)
    assert keys == (Key("k2026b", SECRET_B), Key("k2026a", SECRET_A))
    assert describe_keys(keys) == {"signing": "k2026b", "accepted": ["k2026b", "k2026a"]}


def test_a_secret_may_be_folded_over_lines(write) -> None:
    path = write(f"keys:\n  - id: k1\n    secret: >\n      {A64[:20]}\n      {A64[20:]}\n")
    assert load_keys(path) == (Key("k1", SECRET_A),)


def test_owner_only_modes_are_accepted(write) -> None:
    for mode in (0o600, 0o400, 0o700):
        assert load_keys(write(f"keys: [{{id: k1, secret: '{A64}'}}]\n", mode))


def test_no_keys_describe_as_unsigned() -> None:
    assert describe_keys(()) == {"signing": None, "accepted": []}


# One message per error, naming file, line and key path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            f"keys:\n  - id: k1\n    secret: {SHORT64}\n",
            f"keys.yaml:3: keys[0].secret: {EXPECTED_SECRET}, got base64 of 31 bytes",
        ),
        (
            "keys:\n  - id: k1\n    secret: not base64 at all!\n",
            f"keys.yaml:3: keys[0].secret: {EXPECTED_SECRET}, got text that is not base64",
        ),
        (
            f"keys:\n  - id: k1\n    secret: {A64[:-1]}\n",  # padding cut off
            f"keys.yaml:3: keys[0].secret: {EXPECTED_SECRET}, got text that is not base64",
        ),
        (
            "keys:\n  - id: k1\n    secret: [1, 2]\n",
            f"keys.yaml:3: keys[0].secret: {EXPECTED_SECRET}, got a list",
        ),
        (
            "keys:\n  - id: k1\n    secret: null\n",
            f"keys.yaml:3: keys[0].secret: {EXPECTED_SECRET}, got null",
        ),
        (
            f"keys:\n  - id: k1\n    secret: {A64}\n  - id: k1\n    secret: {B64}\n",
            "keys.yaml:4: keys[1].id: expected an id used once in the file, "
            "got 'k1' again (first as keys[0])",
        ),
        (
            f"keys:\n  - id: 2026\n    secret: {A64}\n",
            "keys.yaml:2: keys[0].id: expected a name of 1-64 characters [A-Za-z0-9_.-] "
            "(quote one that looks like a number), got 2026",
        ),
        (
            f"keys:\n  - id: two words\n    secret: {A64}\n",
            "keys.yaml:2: keys[0].id: expected a name of 1-64 characters [A-Za-z0-9_.-] "
            "(quote one that looks like a number), got 'two words'",
        ),
        ("keys:\n  - id: k1\n", "keys.yaml:2: keys[0]: missing key 'secret'"),
        (
            f"keys:\n  - id: k1\n    secret: {A64}\n    expires: 2027\n",
            "keys.yaml:4: keys[0].expires: unknown key; expected one of: id, secret",
        ),
        (
            f"keys:\n  - id: k1\n    id: k2\n    secret: {A64}\n",
            "keys.yaml:3: keys[0].id: key given twice",
        ),
        (
            "keys: []\n",
            "keys.yaml:1: keys: expected at least one key, got an empty list",
        ),
        (
            "keys:\n",
            "keys.yaml:1: keys: expected a list of keys, each a mapping with an id and a "
            "secret, got null",
        ),
        (
            "keys:\n  - k1\n",
            "keys.yaml:2: keys[0]: expected a mapping with an id and a secret, got 'k1'",
        ),
        (
            "key:\n  - id: k1\n",
            "keys.yaml:1: key: unknown key; expected one of: keys",
        ),
        (
            "# keys: none yet\n",
            "keys.yaml: the file is empty; expected keys: a list of keys, each a mapping "
            "with an id and a secret",
        ),
        (
            f"- id: k1\n  secret: {A64}\n",
            "keys.yaml:1: top level: expected a mapping with the key 'keys', got a list",
        ),
        (
            "keys: [\n",
            "keys.yaml:2: invalid YAML: while parsing a flow node, expected the node content, "
            "but found '<stream end>'",
        ),
    ],
    ids=[
        "short-secret",
        "secret-not-base64",
        "secret-bad-padding",
        "secret-a-list",
        "secret-null",
        "duplicate-id",
        "numeric-id",
        "id-not-a-name",
        "missing-secret",
        "unknown-key",
        "repeated-key",
        "no-keys",
        "keys-null",
        "entry-not-a-mapping",
        "unknown-top-key",
        "empty-file",
        "top-level-list",
        "invalid-yaml",
    ],
)
def test_error_names_file_line_key_expected_and_found(write, text: str, message: str) -> None:
    assert load_error(write(text)) == message


def test_too_many_keys_is_an_error(write) -> None:
    entries = "".join(f"  - {{id: k{index}, secret: '{A64}'}}\n" for index in range(KEYS_MAX + 1))
    assert load_error(write("keys:\n" + entries)) == (
        f"keys.yaml:2: keys: expected at most {KEYS_MAX} keys, got {KEYS_MAX + 1}"
    )


@pytest.mark.parametrize("secret", [SHORT64, A64[:-1] + "!", "[1, 2]", "!!binary " + A64])
def test_no_message_shows_any_part_of_a_secret(write, secret: str) -> None:
    message = load_error(write(f"keys:\n  - id: k1\n    secret: {secret}\n"))
    assert secret not in message
    assert SHORT64[:8] not in message and A64[:8] not in message


def test_a_key_file_error_is_a_config_error() -> None:
    assert issubclass(KeyFileError, ConfigError)


# The file itself: mode, owner, kind


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o644, 0o666])
def test_a_file_group_or_others_may_use_is_refused(write, mode: int) -> None:
    path = write(f"keys: [{{id: k1, secret: '{A64}'}}]\n", mode)
    assert load_error(path) == (
        f"keys.yaml: group or others may use this file (mode {mode:04o}); "
        "only its owner may: chmod 600 keys.yaml"
    )


def test_the_mode_is_checked_before_the_content(write) -> None:
    assert "chmod 600" in load_error(write("not: [valid\n", 0o644))


@as_root
def test_a_file_owned_by_another_user_is_refused(write) -> None:
    path = write(f"keys: [{{id: k1, secret: '{A64}'}}]\n")
    os.chown(path, 54321, -1)
    assert load_error(path) == (
        "keys.yaml: owned by 54321, who could rewrite the keys; expected root: chown root keys.yaml"
    )


@as_root
def test_a_daemon_user_accepts_its_own_file_and_roots_but_no_other(
    write, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(f"keys: [{{id: k1, secret: '{A64}'}}]\n")
    monkeypatch.setattr(os, "geteuid", lambda: 54321)
    assert load_keys(path)  # owned by root
    os.chown(path, 54321, -1)
    assert load_keys(path)  # owned by the daemon's user
    os.chown(path, 54322, -1)
    assert load_error(path) == (
        "keys.yaml: owned by 54322, who could rewrite the keys; "
        "expected the daemon's user (54321) or root: chown 54321 keys.yaml"
    )


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    assert load_error(tmp_path / "missing") == (
        f"{tmp_path / 'missing'}: cannot read: No such file or directory"
    )


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    directory = tmp_path / "keys.d"
    directory.mkdir(mode=0o700)
    assert load_error(directory) == f"{directory}: expected a regular file"


def test_a_file_that_is_not_utf8_is_an_error(write) -> None:
    path = write("")
    path.write_bytes(b"keys: \xff\n")
    assert load_error(path) == "keys.yaml: not UTF-8 text: invalid start byte"


# crdtd --check-config reads the key file too


def check_config(tmp_path: Path, key_text: str, mode: int = 0o600) -> subprocess.CompletedProcess:
    keys = tmp_path / "keys.yaml"
    keys.write_text(key_text)
    keys.chmod(mode)
    config = tmp_path / "crdtd.yaml"
    config.write_text(f"security:\n  key_file: {keys}\n")
    return subprocess.run(
        [sys.executable, "-m", "crdtd.daemon.main", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_config_reports_the_keys_by_id(tmp_path: Path) -> None:
    done = check_config(tmp_path, f"keys: [{{id: k2, secret: '{B64}'}}, {{id: k1, secret: {A64}}}]")
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.splitlines()[1]
        == f"crdtd: {tmp_path / 'keys.yaml'}: ok (keys k2, k1; k2 signs)"
    )
    assert B64 not in done.stdout


def test_a_bad_key_file_fails_the_config_check_with_exit_78(tmp_path: Path) -> None:
    done = check_config(tmp_path, f"keys: [{{id: k1, secret: '{A64}'}}]", mode=0o640)
    assert done.returncode == 78
    assert done.stderr == (
        f"crdtd: {tmp_path / 'keys.yaml'}: group or others may use this file (mode 0640); "
        f"only its owner may: chmod 600 {tmp_path / 'keys.yaml'}\n"
    )


# The control socket's directory


def test_the_socket_directory_is_created_0750_whatever_the_umask(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "crdtd"
    old = os.umask(0o077)
    try:
        make_socket_directory(directory)
    finally:
        os.umask(old)
    assert directory.stat().st_mode & 0o7777 == 0o750


def test_an_existing_socket_directory_is_left_as_it_is(tmp_path: Path) -> None:
    directory = tmp_path / "crdtd"
    directory.mkdir()
    directory.chmod(0o755)
    make_socket_directory(directory)
    assert directory.stat().st_mode & 0o7777 == 0o755
