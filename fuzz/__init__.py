"""Fuzzing crdtd's two parsers of untrusted input: datagrams and control requests.

``fuzz/run decoder --runs 1000000`` drives the atheris fuzzers; ``tests/fuzz`` runs the
same checks (`fuzz.targets`) for a bounded number of hypothesis examples in CI.
"""
