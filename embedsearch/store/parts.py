"""Embeddings as Parquet parts: `id` int64 + `embedding` fixed_size_list<float16|float32>[d], written atomically."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from embedsearch.core.errors import IndexStateError, first_line
from embedsearch.core.files import atomic_path, file_sha256

DTYPES = {"float16": np.float16, "float32": np.float32}
SCHEMA_KEY = b"embedsearch"


def part_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


def part_number(name: str) -> int:
    return int(name[5:10])


def load_npy(path: Path, what: str, error: type[Exception]) -> np.ndarray:
    """A numeric array from a file in numpy's .npy format, never unpickled; anything else is one `error` line
    naming `what` (the option) and the file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise error(f"{what} {path}: {e.strerror}") from None
    if magic != b"\x93NUMPY":
        raise error(f"{what} {path} is not a .npy file (write one with numpy.save)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise error(f"{what} {path}: {first_line(e)}") from None
    if arr.dtype.kind not in "fiu":
        raise error(f"{what} {path} holds {arr.dtype} values, expected numbers")
    return arr


def finite_rows(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """Mask of rows that are finite and non-zero *after* the cast to the storage dtype (fp16 overflows to inf)."""
    with np.errstate(over="ignore"):
        v = vectors.astype(DTYPES[dtype])
    ok = np.isfinite(v).all(axis=1)
    ok &= np.abs(v.astype(np.float32)).sum(axis=1) > 0
    return ok


def write_part(path: Path, ids: np.ndarray, vectors: np.ndarray, dtype: str, metadata: dict) -> dict:
    """Write one part atomically; every row must be finite (callers filter with `finite_rows`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.asarray(ids, dtype=np.int64)
    assert vectors.ndim == 2 and len(ids) == len(vectors), (ids.shape, vectors.shape)
    with np.errstate(over="ignore"):
        v = np.ascontiguousarray(vectors.astype(DTYPES[dtype]))
    if not np.isfinite(v).all():
        raise ValueError("refusing to store non-finite embeddings")
    d = v.shape[1]
    arr = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), d)
    schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.from_numpy_dtype(v.dtype), d))],
                       metadata={SCHEMA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    table = pa.Table.from_arrays([pa.array(ids), arr], schema=schema)
    with atomic_path(path) as tmp:
        # page checksums let a reader detect bit flips; vectors barely compress, so don't spend time on it
        pq.write_table(table, tmp, compression={"id": "zstd", "embedding": "none"}, write_page_checksum=True,
                       row_group_size=max(1, len(ids)), use_dictionary=False, write_statistics=["id"])
    return {"file": path.name, "rows": int(len(ids)), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


PAGE_READER = True  # False: every part decoded by pyarrow (the page reader's baseline in benchmarks/read.py)


def read_part(path: Path, with_vectors: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one part as numpy (ids, vectors in their stored dtype); a damaged file raises IndexStateError.

    The vectors come straight from the embedding column's data pages when the part is laid out as `write_part`
    writes it (`pages.read_vectors`: each page's CRC checked, about 12× pyarrow's list decoding); any other layout,
    and any page that does not read cleanly, goes through pyarrow, which reports damage."""
    import pyarrow.parquet as pq

    try:
        if with_vectors and PAGE_READER:
            fast = _read_pages(path)
            if fast is not None:
                return fast
        t = pq.ParquetFile(path, page_checksum_verification=True).read(
            columns=["id", "embedding"] if with_vectors else ["id"])
    except Exception as e:  # noqa: BLE001 — pyarrow raises several types for damaged files
        raise _unreadable(path, e) from None
    ids = t.column("id").to_numpy()
    if not with_vectors:
        return ids, None
    col = t.column("embedding").combine_chunks()
    d = col.type.list_size
    vecs = col.values.to_numpy(zero_copy_only=False).reshape(-1, d) if len(col) else np.zeros((0, d), np.float32)
    return ids, vecs


def _unreadable(path: Path, e: Exception) -> IndexStateError:
    return IndexStateError(f"part {path} is unreadable ({type(e).__name__}: {first_line(e)}); "
                           "run `embedsearch verify --repair`")


_PHYSICAL = {"halffloat": ("FIXED_LEN_BYTE_ARRAY", np.float16), "float": ("FLOAT", np.float32)}


def _read_pages(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, vectors) by `pages.read_vectors`, or None when the part is laid out otherwise or a page does not read
    cleanly (the caller's pyarrow read then decodes it, or names the damage)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedsearch.store.pages import PageError, chunk_layout, read_vectors

    pf = pq.ParquetFile(path, page_checksum_verification=True)
    field = pf.schema_arrow.field("embedding") if "embedding" in pf.schema_arrow.names else None
    if field is None or not pa.types.is_fixed_size_list(field.type) or str(field.type.value_type) not in _PHYSICAL:
        return None
    physical, dtype = _PHYSICAL[str(field.type.value_type)]
    md = pf.metadata
    leaves = [i for i in range(md.num_columns) if md.schema.column(i).path.split(".")[0] == "embedding"]
    if len(leaves) != 1:
        return None
    chunks = [chunk_layout(md.row_group(g).column(leaves[0]), physical) for g in range(md.num_row_groups)]
    if any(c is None for c in chunks):
        return None
    try:
        vecs = read_vectors(path, chunks, md.num_rows, field.type.list_size, dtype)
    except PageError:
        return None
    ids = pf.read(columns=["id"]).column("id").to_numpy()
    return ids, vecs


def part_metadata(path: Path) -> dict:
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    return json.loads(md.get(SCHEMA_KEY, b"{}"))


def iter_parts(paths: list[Path], dtype=np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for p in paths:
        ids, v = read_part(p)
        yield ids, v.astype(dtype, copy=False)


def read_all(paths: list[Path], dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(iter_parts(paths, dtype))
    if not chunks:
        return np.zeros(0, np.int64), np.zeros((0, 0), dtype)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
