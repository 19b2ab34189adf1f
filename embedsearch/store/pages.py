"""The embedding column of a part read straight from its Parquet data pages: float16 / float32 values copied out
of the file as they lie, each page's CRC checked, instead of pyarrow's element-by-element list decoding.

A part stores each vector as a Parquet list of d elements: one FIXED_LEN_BYTE_ARRAY(2) (float16) or FLOAT per
element, behind repetition and definition levels. pyarrow rebuilds the list from those levels one element at a time
(about 0.35 GB/s per core, docs/benchmarks/read.md). The parts `write_part` writes are uncompressed, without a
dictionary, PLAIN-encoded and checksummed, so the values of each data page are one run of little-endian numbers
after its levels: when every level has a value (no null list or element) and the column holds rows × d values, the
runs laid end to end are the rows in order. `read_vectors` checks exactly that, page by page, and returns None for
any column laid out otherwise (a compressed or dictionary-encoded part written by another tool): the caller then
decodes it with pyarrow. A page whose CRC does not match, or a header that runs past its column chunk, is damage.

The page headers are Thrift compact-protocol structs (parquet.thrift's PageHeader); `_Thrift` reads just enough
of the protocol to walk them.
"""

from __future__ import annotations

import mmap

import numpy as np

try:  # ISA-L's CRC-32 (the same checksum as zlib's): ~11 GB/s against zlib's ~2 GB/s on the dev machine
    from isal.isal_zlib import crc32
except ImportError:  # a platform without an isal wheel: the same result, slower
    from zlib import crc32

# parquet.thrift enums
_DATA_PAGE, _DATA_PAGE_V2 = 0, 3
_PLAIN, _RLE = 0, 3


class PageError(ValueError):
    """The column chunk is damaged (a CRC mismatch, a header that does not parse, sizes that disagree)."""


class _Thrift:
    """The Thrift compact protocol, read-only: a struct is returned as {field id: value}, nested structs as dicts,
    lists as Python lists, binary as bytes."""

    def __init__(self, buf, pos: int, end: int):
        self.buf, self.pos, self.end = buf, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise PageError("a page header runs past its column chunk")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 63:
                raise PageError("a page header holds a malformed integer")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int):
        if kind in (1, 2):  # booleans carry their value in the type nibble
            return kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):  # i16, i32, i64
            return self.zigzag()
        if kind == 7:  # double
            self.pos += 8
            return None
        if kind == 8:  # binary
            n = self.varint()
            if n > self.end - self.pos:
                raise PageError("a page header runs past its column chunk")
            self.pos += n
            return bytes(self.buf[self.pos - n:self.pos])
        if kind in (9, 10):  # list, set
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            return [self.value(elem) for _ in range(size)]
        if kind == 12:
            return self.struct()
        raise PageError(f"a page header holds an unknown Thrift type {kind}")

    def struct(self) -> dict:
        out, last = {}, 0
        while True:
            head = self.byte()
            if head == 0:
                return out
            kind, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            out[fid] = self.value(kind)
            last = fid


def chunk_layout(column_meta, physical: str) -> tuple[int, int] | None:
    """(start, length) in the file of a column chunk `read_vectors` can read, or None (compressed, dictionary
    pages, another encoding or physical type)."""
    m = column_meta
    if (m.compression != "UNCOMPRESSED" or m.has_dictionary_page or m.physical_type != physical
            or not set(m.encodings) <= {"PLAIN", "RLE", "BIT_PACKED"}):
        return None
    return m.data_page_offset, m.total_compressed_size


def read_vectors(path, chunks: list[tuple[int, int]], rows: int, d: int, dtype: np.dtype) -> np.ndarray:
    """The (rows, d) vectors of a part from the data pages of its embedding column chunks (one per row group),
    each page's CRC verified; PageError for damage, and for any page whose levels and values do not match one
    value per level (the caller falls back to pyarrow, which tells a null apart from damage)."""
    dtype = np.dtype(dtype)
    out = np.empty(rows * d, dtype)
    filled = 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as mv:
        for start, length in chunks:
            pos, end = start, start + length
            if end > len(mm):
                raise PageError("a column chunk runs past the end of the file")
            while pos < end:
                t = _Thrift(mm, pos, end)
                h = t.struct()
                body, size = t.pos, h.get(3)
                if size is None or size < 0 or size != h.get(2) or body + size > end:
                    raise PageError("a page's sizes disagree with its column chunk")
                pos = body + size
                crc = h.get(4)
                if crc is None:
                    raise PageError("a data page has no checksum")
                if crc32(mv[body:body + size]) != crc & 0xFFFFFFFF:
                    raise PageError(f"page at byte {body} fails its CRC check")
                values, count = _values_of(mm, h, body, size)
                n = values[1] // dtype.itemsize
                if count != n or values[1] % dtype.itemsize or filled + n > len(out):
                    raise PageError("a data page holds nulls or more values than the part's rows")
                out[filled:filled + n] = np.frombuffer(mv, dtype.newbyteorder("<"), n, values[0])
                filled += n
    if filled != len(out):
        raise PageError(f"the column holds {filled} values, expected {rows} × {d}")
    return out.reshape(rows, d)


def _values_of(buf, h: dict, body: int, size: int) -> tuple[tuple[int, int], int]:
    """((offset, bytes) of a data page's PLAIN values, its number of levels)."""
    if h.get(1) == _DATA_PAGE and 5 in h:
        dp = h[5]
        if dp.get(2) != _PLAIN or dp.get(3) != _RLE or dp.get(4) != _RLE:
            raise PageError("a data page is not PLAIN with RLE levels")
        at = body
        for _ in range(2):  # repetition then definition levels, each behind a 4-byte length
            if at + 4 > body + size:
                raise PageError("a data page's levels run past the page")
            at += 4 + int.from_bytes(buf[at:at + 4], "little")
        if at > body + size:
            raise PageError("a data page's levels run past the page")
        return (at, body + size - at), dp.get(1, -1)
    if h.get(1) == _DATA_PAGE_V2 and 8 in h:
        dp = h[8]  # num_values, num_nulls, num_rows, encoding, def bytes, rep bytes, is_compressed
        if dp.get(4) != _PLAIN or dp.get(2, 0) != 0:
            raise PageError("a data page is not PLAIN without nulls")
        levels = (dp.get(5, 0), dp.get(6, 0))
        at = body + sum(levels)
        if min(levels) < 0 or at > body + size:
            raise PageError("a data page's levels run past the page")
        return (at, body + size - at), dp.get(1, -1)
    raise PageError(f"unexpected page type {h.get(1)} in the embedding column")
