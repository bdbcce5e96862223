"""A low-overhead load generator for bench/peers.py: one process, many connections.

    python bench/loadgen.py PROTOCOL PATHS CONNECTIONS WINDOW SECONDS

PROTOCOL is ``crdtd`` (JSON-lines ``add``) or ``redis`` (RESP ``INCRBY``); PATHS are
Unix socket paths, comma-separated, used round robin. Each connection keeps WINDOW
requests in flight, re-sending as many as were answered, with pre-encoded requests
and a selector: the generator must cost far less than the server it measures. Prints
the number of answers received in SECONDS (after every connection sent its first
window), nothing else.
"""

from __future__ import annotations

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


def main() -> None:
    protocol, paths, connections, window, seconds = sys.argv[1:6]
    request, end = REQUESTS[protocol], ANSWER_END[protocol]
    selector = selectors.DefaultSelector()
    sockets = []
    for index in range(int(connections)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(paths.split(",")[index % len(paths.split(","))])
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        sockets.append(sock)
    for sock in sockets:
        sock.sendall(request * int(window))
    answered = 0
    deadline = time.perf_counter() + float(seconds)
    while time.perf_counter() < deadline:
        for key, _ in selector.select(0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            count = sock.recv(1 << 20).count(end)
            answered += count
            if count:
                sock.send(request * count)
    print(answered)


if __name__ == "__main__":
    main()
