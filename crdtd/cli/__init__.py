"""crdtctl, the command-line client: parse, run the command, render the result.

Needs only ``crdtd.control.client`` and ``crdtd.control.protocol``; never the core, the
daemon, asyncio or third-party packages, so it starts fast.
"""
