"""What an idle node's announce costs when it holds many variables (issue 15).

    python bench/announce_cost.py [--variables 10005] [--nodes 3] [--seconds 10]
        [--adds-every-ms MS] [--out FILE.json]

In the core alone (no sockets): *nodes* nodes on an immediate network that passes
multicast; each adds 1 to every one of *variables* variables (so every variable has a
mark of every origin), the cluster settles for 5 s of protocol time, then it idles for
*seconds* (or, with ``--adds-every-ms``, each node adds 1 to a rotating variable that
often meanwhile: a steady load). Reported per node over that stretch:

- ``datagrams_per_announce`` / ``kib_per_announce``: everything it sent (multicast
  counts once), per announce;
- ``datagrams_per_s`` / ``kib_per_s``: the same per protocol second;
- ``cpu_s``: process CPU of the whole cluster over the idle stretch, and
  ``cpu_percent_per_node``: the same as a share of one core per node and protocol second.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crdtd.core.ids import Address, Origin  # noqa: E402
from crdtd.core.node import Node  # noqa: E402
from crdtd.core.settings import Settings  # noqa: E402

START = 1_000.0


class Net:
    def __init__(self, count: int, variables: int) -> None:
        self.ids = [f"n{index}" for index in range(count)]
        self.address: dict[str, Address] = {
            i: (f"10.0.0.{k + 1}", 7000) for k, i in enumerate(self.ids)
        }
        self.by_address = {a: i for i, a in self.address.items()}
        settings = Settings(variables_max=2 * variables)
        self.now = START
        self.nodes = {i: Node(Origin(i, 1), settings, random.Random(i), START) for i in self.ids}
        self.sent = {i: [0, 0] for i in self.ids}

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for i, node in self.nodes.items():
                node.records_to_persist()
                out = node.datagrams_to_send()
                node.events()
                for datagram in out:
                    moved = True
                    self.sent[i][0] += 1
                    self.sent[i][1] += len(datagram.payload)
                    multicast = datagram.destination is None
                    to = (
                        [j for j in self.ids if j != i]
                        if multicast
                        else [self.by_address[datagram.destination]]
                    )
                    for j in to:
                        self.nodes[j].receive_datagram(
                            datagram.payload, self.address[i], self.now, via_multicast=multicast
                        )

    def run(self, until: float) -> None:
        while True:
            due = min(node.get_timer() for node in self.nodes.values())
            if due > until:
                break
            self.now = max(self.now, due)
            for node in self.nodes.values():
                if node.get_timer() <= self.now:
                    node.handle_timer(self.now)
            self.pump()
        self.now = until


def measure(count: int, variables: int, seconds: float, adds_every_ms: float = 0) -> dict[str, Any]:
    net = Net(count, variables)
    net.run(net.now + 0.1)
    for index in range(variables):
        for node in net.nodes.values():
            node.add(f"var{index:05d}", 1, net.now)
        if index % 500 == 0:
            net.pump()
    net.pump()
    net.run(net.now + 5.0)
    net.sent = {i: [0, 0] for i in net.ids}
    before = {i: node.stats.get("announces_sent", 0) for i, node in net.nodes.items()}
    cpu = time.process_time()
    end = net.now + seconds
    if adds_every_ms:
        step = 0
        while net.now < end:
            for index, node in enumerate(net.nodes.values()):
                node.add(f"var{(step * 7 + index) % variables:05d}", 1, net.now)
            net.pump()
            step += 1
            net.run(min(end, net.now + adds_every_ms / 1000))
    net.run(end)
    cpu = time.process_time() - cpu
    per_node = {}
    for i, node in net.nodes.items():
        announces = node.stats["announces_sent"] - before[i]
        datagrams, size = net.sent[i]
        per_node[i] = {
            "announces": announces,
            "datagrams_per_announce": round(datagrams / announces, 1),
            "kib_per_announce": round(size / announces / 1024, 2),
            "datagrams_per_s": round(datagrams / seconds, 1),
            "kib_per_s": round(size / seconds / 1024, 1),
        }
    first = next(iter(net.nodes.values()))
    converged = all(
        len({node.value(v) for node in net.nodes.values()}) == 1 for v in list(first.counters)
    )
    return {
        "nodes": count,
        "variables": len(first.counters),
        "seconds": seconds,
        "adds_every_ms": adds_every_ms,
        "per_node": per_node,
        "cpu_s": round(cpu, 3),
        "cpu_percent_per_node": round(100 * cpu / count / seconds, 3),
        "converged": converged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variables", type=int, default=10_005)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--adds-every-ms", type=float, default=0.0)
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    result = measure(options.nodes, options.variables, options.seconds, options.adds_every_ms)
    text = json.dumps(result, indent=1)
    print(text)
    if options.out:
        options.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
