"""The control socket: how ``crdtctl`` (and scripts) talk to a running crdtd.

``protocol`` is the sans-IO part (framing, validation, error codes), ``server`` the
asyncio shell the daemon runs, ``client`` a small blocking client. This package file
imports nothing, so ``crdtctl`` can load the client without asyncio.
"""
