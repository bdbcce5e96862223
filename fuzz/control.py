#!/usr/bin/env python3
"""atheris fuzzer: the control protocol's framing (``LineBuffer``) and request decoder
(``decode_request``). The checks are `fuzz.targets.check_control`. Run it through
``fuzz/run control --runs N``; arguments after ``--`` go to libFuzzer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["crdtd", "fuzz"]):
    from fuzz import targets


def test_one_input(data: bytes) -> None:
    targets.check_control(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
