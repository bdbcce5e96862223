"""The replication protocol as a pure state machine.

Nothing under ``crdtd.core`` touches a socket, a clock, a file, a thread or a logger:
inputs arrive as method calls that carry ``now``; outputs are pulled by the caller
(``Node.records_to_persist``, ``Node.datagrams_to_send``, ``Node.events``,
``Node.get_timer``). Every owner runs a node through one `crdtd.core.step.Stepper`,
which fixes what a step takes and the order of its flush. A test checks that these
modules import no I/O.
"""
