"""crdtd: named integer counters kept in agreement across a LAN, with no central server."""

__version__ = "0.2.0"
