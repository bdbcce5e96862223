"""The bounds-checked cursor every decoder in `crdtd.core.decoding` reads with.

Each read checks that the bytes are there and that the field is in its range (a name
matches the name rules, a nonce is 1..`NONCE_MAX`, a big integer has at most
`BIGINT_BYTES_MAX` bytes, a count cannot promise more items than the bytes left could
hold), and raises `MalformedDatagram` otherwise: a decoder built from these reads
cannot be walked past the datagram's end or made to allocate for items that are not
there.
"""

from __future__ import annotations

import struct

from crdtd.core.ids import NONCE_MAX, Origin, is_name
from crdtd.core.layout import _U8, _U16, _U64, BIGINT_BYTES_MAX, MalformedDatagram
from crdtd.core.messages import BarrierId


class Reader:
    """A cursor over a datagram; every read checks bounds and raises MalformedDatagram."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, end: int) -> None:
        self.data = data
        self.pos = 0
        self.end = end

    def take(self, fmt: struct.Struct) -> tuple[int, ...]:
        if self.pos + fmt.size > self.end:
            raise MalformedDatagram("malformed", "truncated")
        values = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return values

    def u8(self) -> int:
        return self.take(_U8)[0]

    def u16(self) -> int:
        return self.take(_U16)[0]

    def u64(self) -> int:
        return self.take(_U64)[0]

    def raw(self, size: int) -> bytes:
        if self.pos + size > self.end:
            raise MalformedDatagram("malformed", "truncated")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def name(self) -> str:
        raw = self.raw(self.u8())
        try:
            value = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedDatagram("malformed", "non-ascii name") from None
        if not is_name(value):
            raise MalformedDatagram("malformed", f"bad name {value!r}")
        return value

    def origin(self) -> Origin:
        return Origin(self.name(), self.u64())

    def nonce(self) -> int:
        value = self.u64()
        if not 1 <= value <= NONCE_MAX:
            raise MalformedDatagram("malformed", "nonce out of range")
        return value

    def mark(self) -> int:
        value = self.u64()
        if value > NONCE_MAX:
            raise MalformedDatagram("malformed", "watermark out of range")
        return value

    def bigint(self) -> int:
        size = self.u8()
        if not 1 <= size <= BIGINT_BYTES_MAX:
            raise MalformedDatagram("malformed", "integer length")
        return int.from_bytes(self.raw(size), "big", signed=True)

    def barrier(self) -> BarrierId:
        return BarrierId(self.u64(), self.name(), self.u64())

    def count(self, item_bytes_min: int) -> int:
        value = self.u16()
        if value * item_bytes_min > self.end - self.pos:
            raise MalformedDatagram("malformed", "count beyond datagram")
        return value
