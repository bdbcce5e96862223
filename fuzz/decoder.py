#!/usr/bin/env python3
"""atheris fuzzer: the datagram decoder (``wire.decode``, without and with keys) and a
live node's ``receive_datagram``. The checks are `fuzz.targets.check_decode` and
`fuzz.targets.LiveNodes`. Run it through ``fuzz/run decoder --runs N``; arguments after
``--`` go to libFuzzer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["crdtd", "fuzz"]):
    from fuzz import targets

LIVE = targets.LiveNodes()


def test_one_input(data: bytes) -> None:
    targets.check_decode(data)
    LIVE.feed(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
