"""Sockets and the one asyncio task that owns the protocol core."""
