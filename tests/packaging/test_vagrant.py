"""The Vagrantfile booted for real: ``packaging/vagrant-test`` runs ``vagrant up`` of
three Debian 12 VMs under vagrant-libvirt, inside a network namespace it makes (no VM
address exists outside it), checks that the nodes converge, and tears it all down (see
its header).

It needs root on Debian 12, the Debian mirror of this machine's apt sources (packages,
and the box the first time: packaging/vagrant-box, about 7 minutes) and 15-20 minutes
with emulated VMs, about 5 GB of memory; so it runs only on demand:
``scripts/test -m vagrant tests/packaging``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VAGRANT_TEST = REPO / "packaging" / "vagrant-test"
TIMEOUT_S = 3900.0  # the script bounds itself at 50 min inside, plus the box build


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (libvirtd, namespaces, mounts)"
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        return "needs Debian (apt-get installs vagrant-libvirt, libvirt and QEMU)"
    return None


@pytest.mark.vagrant
def test_vagrant_up_brings_three_vms_that_converge() -> None:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    result = subprocess.run(
        [str(VAGRANT_TEST)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    print(output)  # the checks and their timings: shown with -rP
    assert result.returncode == 0, f"packaging/vagrant-test exited {result.returncode}:\n{output}"
    assert "checks passed" in output, output
