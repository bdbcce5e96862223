"""bench/peers.py and bench/loadgen.py run: etcd's HTTP answers are cut where they end,
and a small run of crdtd's own parts (no Redis, no etcd, nothing installed) writes its
figures. Times are measured, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.loadgen import HttpAnswers, parse_kv

ROOT = Path(__file__).resolve().parents[2]


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nDate: x\r\n\r\n%s" % (len(body), body)


def test_http_answers_are_cut_at_their_content_length_however_they_arrive() -> None:
    stream = answer(b'{"a":1}') + answer(b"{}") + answer(b'{"kvs":[]}')
    for size in (1, 7, len(stream)):
        answers = HttpAnswers()
        bodies = []
        for start in range(0, len(stream), size):
            bodies += answers.feed(stream[start : start + size])
        assert bodies == [b'{"a":1}', b"{}", b'{"kvs":[]}']


def test_a_key_is_read_as_its_value_and_mod_revision() -> None:
    assert parse_kv(None) == (0, 0)
    assert parse_kv([{"key": "eA==", "value": "NDI=", "mod_revision": "7"}]) == (42, 7)


def test_a_small_run_of_crdtds_parts_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "peers.py"), "--quick", "--no-redis"),
            *("--no-etcd", "--parts", "batch,lag", "--batch-ops", "500", "--lag-probes", "3"),
            *("--repeat", "1", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    figures = {row["figure"]: row["crdtd"] for row in result["figures"]}
    assert result["batch"]["ops"] == 501
    assert result["lag"]["probes"] == 3 and result["lag"]["timeouts"] == 0
    assert "replication lag p50 ms (add -> both others)" in figures
