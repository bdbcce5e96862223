"""A low-overhead load generator for bench/peers.py: one process, many connections.

    python bench/loadgen.py PROTOCOL PATHS CONNECTIONS WINDOW SECONDS

PROTOCOL is one of:

- ``crdtd``: JSON-lines ``add`` on crdtd's control socket;
- ``redis``: RESP ``INCRBY``;
- ``etcd-cas``: an increment as etcd users write it, through etcd's JSON gRPC gateway
  over HTTP/1.1 keep-alive: a txn comparing the key's ``mod_revision`` with the last one
  seen, putting value + 1 on success and reading the key on failure, retried with what
  the failure read (after a success the put's revision is the one to compare with, so
  no range is needed between increments); one range when the connection opens;
- ``etcd-put``: a blind put of the key, no read and no compare: an upper bound on any
  durable etcd increment.

PATHS are comma-separated and used round robin: Unix socket paths for crdtd and Redis,
``HOST:PORT`` for etcd. Each connection keeps WINDOW requests in flight, re-sending as
many as were answered, with pre-encoded requests and a selector: the generator must
cost far less than the server it measures. etcd's gateway answers one request at a
time per HTTP/1.1 connection, so its WINDOW must be 1. Prints the number of answers
(for etcd-cas: of successful increments) received in SECONDS after every connection
sent its first window, then, for etcd-cas, the number of compare failures retried.
"""

from __future__ import annotations

import base64
import json
import selectors
import socket
import sys
import time

REQUESTS = {
    "crdtd": json.dumps(
        {"v": 1, "id": 1, "cmd": "add", "args": {"variable": "x", "delta": 1}}
    ).encode()
    + b"\n",
    "redis": b"*3\r\n$6\r\nINCRBY\r\n$1\r\nx\r\n$1\r\n1\r\n",
}
ANSWER_END = {"crdtd": b"\n", "redis": b"\r\n"}
ETCD_KEY = base64.b64encode(b"x").decode()


def http_post(host: str, path: str, body: object) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def cas(host: str, value: int, revision: int) -> bytes:
    compare = {"key": ETCD_KEY, "result": "EQUAL", "target": "MOD", "mod_revision": str(revision)}
    new = base64.b64encode(str(value + 1).encode()).decode()
    return http_post(
        host,
        "/v3/kv/txn",
        {
            "compare": [compare],
            "success": [{"request_put": {"key": ETCD_KEY, "value": new}}],
            "failure": [{"request_range": {"key": ETCD_KEY}}],
        },
    )


def parse_kv(kvs: list[dict[str, str]] | None) -> tuple[int, int]:
    """(value, mod_revision) of the key; (0, 0) when it does not exist."""
    if not kvs:
        return 0, 0
    return int(base64.b64decode(kvs[0].get("value", "")) or 0), int(kvs[0]["mod_revision"])


class HttpAnswers:
    """Cuts HTTP/1.1 responses with a Content-Length out of a byte stream."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        bodies: list[bytes] = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return bodies
            head = self.buffer[:end].lower()
            start = head.find(b"content-length:")
            if start < 0:
                raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
            line_end = head.find(b"\r\n", start)
            length = int(head[start + 15 : line_end if line_end >= 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return bodies
            if not head.startswith(b"http/1.1 200"):
                raise RuntimeError(f"etcd answered {self.buffer[: end + 4 + length][:300]!r}")
            bodies.append(self.buffer[end + 4 : end + 4 + length])
            self.buffer = self.buffer[end + 4 + length :]


def connect(path: str) -> socket.socket:
    if path.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    else:
        host, port = path.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def stream(protocol: str, sockets: list[socket.socket], window: int, seconds: float) -> None:
    """crdtd and Redis: count answer terminators, re-send as many requests."""
    request, end = REQUESTS[protocol], ANSWER_END[protocol]
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    for sock in sockets:
        sock.sendall(request * window)
    answered = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for key, _ in selector.select(0.1):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            count = ready.recv(1 << 20).count(end)
            answered += count
            if count:
                ready.send(request * count)
    print(answered)


def etcd(protocol: str, paths: list[str], sockets: list[socket.socket], seconds: float) -> None:
    """etcd: one request in flight per connection, each answer parsed."""
    selector = selectors.DefaultSelector()
    states: dict[int, tuple[HttpAnswers, str, list[int]]] = {}
    put = http_post(
        paths[0], "/v3/kv/put", {"key": ETCD_KEY, "value": base64.b64encode(b"1").decode()}
    )
    for index, sock in enumerate(sockets):
        host = paths[index % len(paths)]
        # value, mod_revision last seen; the range's answer fills them in
        states[sock.fileno()] = (HttpAnswers(), host, [0, -1])
        first = (
            put if protocol == "etcd-put" else http_post(host, "/v3/kv/range", {"key": ETCD_KEY})
        )
        sock.sendall(first)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    answered = retried = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for key, _ in selector.select(0.1):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            answers, host, seen = states[ready.fileno()]
            data = ready.recv(1 << 20)
            if not data:
                raise RuntimeError(f"etcd at {host} closed the connection")
            for body in answers.feed(data):
                if protocol == "etcd-put":
                    answered += 1
                    ready.send(put)
                    continue
                out = json.loads(body)
                if seen[1] < 0:
                    seen[0], seen[1] = parse_kv(out.get("kvs"))  # the first range
                elif out.get("succeeded"):
                    answered += 1
                    seen[0], seen[1] = seen[0] + 1, int(out["header"]["revision"])
                else:
                    retried += 1
                    seen[0], seen[1] = parse_kv(out["responses"][0]["response_range"].get("kvs"))
                ready.send(cas(host, seen[0], seen[1]))
    print(answered, retried)


def main() -> None:
    protocol, paths_text, connections, window, seconds = sys.argv[1:6]
    paths = paths_text.split(",")
    sockets = [connect(paths[index % len(paths)]) for index in range(int(connections))]
    if protocol.startswith("etcd"):
        if int(window) != 1:
            raise SystemExit("etcd's HTTP/1.1 gateway takes one request at a time: WINDOW 1")
        etcd(protocol, paths, sockets, float(seconds))
    else:
        stream(protocol, sockets, int(window), float(seconds))


if __name__ == "__main__":
    main()
