"""The boot test: three Debian containers booted with systemd, each installing the
package, checked end to end by ``packaging/boot-test`` (see its header for the list),
once on each supported release: Debian 12 (bookworm) and Debian 13 (trixie).

It needs root, systemd-nspawn and the network to the Debian mirror of this machine's
apt sources the first time (to build each cached root), and takes about a minute warm
per release, a minute or two cold; so it is ``boot``: ``scripts/test -m boot
tests/packaging``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOOT_TEST = REPO / "packaging" / "boot-test"
TIMEOUT_S = 1200.0  # a cold cache builds the root: minutes, not more


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (containers, namespaces, mounts)"
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        return "needs Debian (apt-get installs systemd-nspawn and mmdebstrap)"
    return None


@pytest.mark.boot
@pytest.mark.parametrize("release", ["bookworm", "trixie"])
def test_packaged_crdtd_boots_converges_and_survives_restarts(release: str) -> None:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    result = subprocess.run(
        [str(BOOT_TEST), "--release", release],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"packaging/boot-test exited {result.returncode}:\n{output}"
    assert "checks passed" in output, output
