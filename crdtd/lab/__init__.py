"""The LAN lab: real crdtd daemons in network namespaces, with real faults.

``python -m crdtd.lab up --nodes 5`` starts a lab to play with; ``soak`` runs fault
scenarios for as long as asked; tests/lan uses the same pieces:

- `crdtd.lab.netns`: namespaces, veth, bridge, iptables; the run lock and the cleanup of
  crashed runs;
- `crdtd.lab.lab`: `Lab`, `Host` (a namespace on the bridge) and `Node` (a host running
  crdtd), and the faults (loss, partitions, one-way partitions, multicast cut off);
- `crdtd.lab.workload`: writers adding on every node, and the `Ledger` of acked and
  maybe-applied adds that says what every counter must read;
- `crdtd.lab.checks`: convergence and fold checks that report what each node reads and
  the failing nodes' log tails;
- `crdtd.lab.scenarios`: the fault scenarios (loss, partition, kill -9, join during a
  barrier, ...), shared by the tests and the soak.

Needs root, iproute2 and iptables; `unavailable_reason` says what is missing.
"""

from crdtd.lab.checks import NotConverged, await_convergence, await_folded
from crdtd.lab.lab import KEYLESS, Host, Lab, Node
from crdtd.lab.netns import LabError, clean_stale, unavailable_reason
from crdtd.lab.workload import Ledger, Outcome, Workload

__all__ = [
    "KEYLESS",
    "Host",
    "Lab",
    "LabError",
    "Ledger",
    "Node",
    "NotConverged",
    "Outcome",
    "Workload",
    "await_convergence",
    "await_folded",
    "clean_stale",
    "unavailable_reason",
]
