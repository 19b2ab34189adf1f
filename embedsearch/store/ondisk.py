"""IVF indexes whose inverted lists live on disk, for indexes larger than the memory they may take.

The layout, beside the manifest:

    index.faiss            the trained coarse quantizer and, per list, where its codes and ids sit in the lists file
    lists.NNNN.ivfdata     the inverted lists (FAISS's OnDiskInvertedLists format), version NNNN; read through mmap
    ivf-build/             work in progress, removed once the manifest naming the new version is published:
        trained.faiss      the trained, empty index (kept across a resume, so a resumed build is identical)
        shard-PPPPP-QQQQQ.faiss  parts PPPPP..QQQQQ added to a copy of it (the shard's lists, in memory when read)
        plan.json          what the shards are for (version, factory, the lists it extends, parts and their
                           sha256, the shard groups, the seed): a resume with another plan starts the folder over

A build trains once (on the seeded sample), adds the parts into shards of at most `shard_bytes` of codes each (one
Ray task per shard with `--engine ray`), then merges: the new lists file is sized up front from the shards' list
sizes and every shard, read one at a time, writes its part of each list at that list's offset (`pwrite`, through
the page cache: the process holds one shard, never the whole index). The codes of a list come in shard order, which
is part order, so the result is the in-RAM index of the same trained quantizer, byte for byte in its lists.

`--add` keeps the trained quantizer and merges the current lists file (read with `pread`) with shards of the new
parts into the next version; an on-disk index is never changed in place, so readers of the previous snapshot keep
their mapped lists file until the new manifest is published. index.faiss records only the lists file's base name and
is opened with IO_FLAG_ONDISK_SAME_DIR, so a moved or copied index directory opens where it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from embedsearch.core.errors import ConfigError, IndexStateError
from embedsearch.core.files import atomic_path, atomic_write_bytes, crash_point, file_sha256
from embedsearch.core.output import c_stdout_to_stderr
from embedsearch.core.vectors import l2_normalize

LISTS_RE = re.compile(r"^lists\.(\d{4,9})\.ivfdata$")
WORK_DIR = "ivf-build"
DEFAULT_SHARD_BYTES = 256 * 2**20  # without --max-memory
MIN_SHARD_BYTES = 64 * 2**10  # a tight budget still gets shards worth a task
ID_BYTES = 8


def lists_name(version: int) -> str:
    return f"lists.{version:04d}.ivfdata"


def lists_version(name: str) -> int:
    m = LISTS_RE.match(name)
    if m is None:
        raise IndexStateError(f"{name!r} is not an inverted-lists file name (lists.NNNN.ivfdata)")
    return int(m.group(1))


def code_bytes(factory: str, dim: int) -> int:
    """Bytes one vector takes in the lists (its code plus its id)."""
    import faiss

    from embedsearch.store.faiss_index import make_index

    ivf = faiss.try_extract_index_ivf(make_index(dim, factory))
    if ivf is None:
        raise ConfigError(f"--on-disk needs an IVF index (e.g. IVF4096,Flat), not {factory!r}")
    return int(ivf.code_size) + ID_BYTES


def plan_shards(part_rows: list[tuple[int, int]], row_bytes: int, shard_bytes: int) -> list[list[int]]:
    """Consecutive parts grouped so that each shard's lists stay within `shard_bytes` (a part larger than that is
    a shard alone). `part_rows`: (part number, rows) in part order."""
    shards: list[list[int]] = []
    size = 0
    for number, rows in part_rows:
        b = rows * row_bytes
        if not shards or size + b > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(number)
        size += b
    return shards


def shard_name(parts: list[int]) -> str:
    return f"shard-{parts[0]:05d}-{parts[-1]:05d}.faiss"


def build_shard(trained: Path, part_paths: list[Path], out: Path) -> dict:
    """Add the parts to a copy of the trained index and write it atomically, with its list sizes beside it (the
    merge sizes the lists file from those without reading the shard). Runs in-process or as a Ray task."""
    import faiss

    from embedsearch.store.faiss_index import save_index
    from embedsearch.store.parts import read_part

    index = faiss.read_index(str(trained))
    rows = 0
    for p in part_paths:
        ids, v = read_part(p)
        if len(ids):
            index.add_with_ids(l2_normalize(v.astype(np.float32, copy=False)), np.ascontiguousarray(ids, np.int64))
            rows += len(ids)
    inv = faiss.extract_index_ivf(index).invlists
    sizes = np.asarray([inv.list_size(j) for j in range(inv.nlist)], np.int64)
    atomic_write_bytes(out.with_suffix(".sizes.npy"), _npy_bytes(sizes))
    save_index(index, out)  # last: a shard file means its sizes file is there too
    return {"file": out.name, "rows": rows}


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


class _Layout:
    """Where a list's codes and ids go in a lists file: capacity = size, lists back to back (FAISS's own layout)."""

    def __init__(self, sizes: np.ndarray, code_size: int):
        self.sizes, self.code_size = sizes.astype(np.int64), code_size
        stride = self.sizes * (code_size + ID_BYTES)
        self.offsets = np.concatenate([[0], np.cumsum(stride)[:-1]]).astype(np.int64)
        self.total = int(stride.sum())

    def codes_at(self, j: int, start: int) -> int:
        return int(self.offsets[j] + start * self.code_size)

    def ids_at(self, j: int, start: int) -> int:
        return int(self.offsets[j] + self.sizes[j] * self.code_size + start * ID_BYTES)


class _Source:
    """One input of a merge: its list sizes, and (codes, ids) bytes of list j while it is open."""

    sizes: np.ndarray

    def open(self) -> None: ...
    def read(self, j: int) -> tuple[memoryview, memoryview]: ...
    def close(self) -> None: ...


class ShardSource(_Source):
    """A shard written by `build_shard`, loaded into memory while it is merged (at most `shard_bytes`)."""

    def __init__(self, path: Path):
        from embedsearch.store.parts import load_npy

        self.path, self.index = path, None
        self.sizes = load_npy(path.with_suffix(".sizes.npy"), "shard sizes", IndexStateError).astype(np.int64)

    def open(self) -> None:
        import faiss

        self.index = faiss.read_index(str(self.path))
        self.inv = faiss.extract_index_ivf(self.index).invlists

    def read(self, j: int):
        import faiss

        m = int(self.sizes[j])
        codes = faiss.rev_swig_ptr(self.inv.get_codes(j), m * self.inv.code_size)
        ids = faiss.rev_swig_ptr(self.inv.get_ids(j), m)
        return memoryview(codes), memoryview(np.asarray(ids).view(np.uint8))

    def close(self) -> None:
        self.index = self.inv = None


class ListsFileSource(_Source):
    """The current lists file of an on-disk index, read list by list with `pread` (no mapping, so it adds page
    cache, not resident memory)."""

    def __init__(self, index_file: Path, lists_dir: Path):
        import faiss

        with c_stdout_to_stderr():
            idx = faiss.read_index(str(index_file), faiss.IO_FLAG_SKIP_IVF_DATA)
        od = faiss.downcast_InvertedLists(faiss.extract_index_ivf(idx).invlists)
        n = od.nlist
        self.code_size = od.code_size
        self.lists = [(int(od.lists.at(j).size), int(od.lists.at(j).capacity), int(od.lists.at(j).offset))
                      for j in range(n)]
        self.sizes = np.asarray([s for s, _, _ in self.lists], np.int64)
        self.file = lists_dir / Path(od.filename).name
        del idx
        self.fd = None

    def open(self) -> None:
        self.fd = os.open(self.file, os.O_RDONLY)

    def read(self, j: int):
        size, cap, off = self.lists[j]
        codes = os.pread(self.fd, size * self.code_size, off)
        ids = os.pread(self.fd, size * ID_BYTES, off + cap * self.code_size)
        return memoryview(codes), memoryview(ids)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def merge(trained: Path, sources: list[_Source], lists_path: Path, index_path: Path,
          progress: Callable[[int], None] | None = None) -> dict:
    """Write the lists file (atomically) from the sources in order, then index.faiss naming it (atomically);
    `progress(rows)` after each source."""
    import faiss

    from embedsearch.store.faiss_index import save_index

    index = faiss.read_index(str(trained))
    ivf = faiss.extract_index_ivf(index)
    nlist, cs = ivf.nlist, ivf.code_size
    sizes = np.zeros(nlist, np.int64)
    for s in sources:
        if len(s.sizes) != nlist:
            raise IndexStateError(f"a merge input has {len(s.sizes)} lists, the trained index {nlist}")
        sizes += s.sizes
    lay = _Layout(sizes, cs)

    with atomic_path(lists_path) as tmp, open(tmp, "wb") as f:
        fd = f.fileno()
        os.ftruncate(fd, lay.total)
        filled = np.zeros(nlist, np.int64)
        for src in sources:
            src.open()
            try:
                for j in np.flatnonzero(src.sizes):
                    codes, ids = src.read(int(j))
                    os.pwrite(fd, codes, lay.codes_at(j, filled[j]))
                    os.pwrite(fd, ids, lay.ids_at(j, filled[j]))
                    filled[j] += src.sizes[j]
            finally:
                src.close()
            crash_point(f"mid-write:{lists_path.name}")
            if progress:
                progress(int(src.sizes.sum()))
    od = faiss.OnDiskInvertedLists(nlist, cs, lists_path.name)
    sizes_u64 = np.ascontiguousarray(sizes, dtype=np.uint64)  # held: swig_ptr keeps no reference to it
    od.set_all_lists_sizes(faiss.swig_ptr(sizes_u64))
    for j in range(nlist):  # the offsets FAISS computes are the ones written above; checked, not assumed
        if int(od.lists.at(j).offset) != int(lay.offsets[j]):
            raise IndexStateError(f"FAISS lays out list {j} at {od.lists.at(j).offset}, expected {lay.offsets[j]}")
    od.totsize = lay.total
    ivf.replace_invlists(od, True)
    od.this.disown()
    ivf.ntotal = index.ntotal = int(sizes.sum())
    written = save_index(index, index_path)
    return {"ntotal": int(sizes.sum()), "lists_bytes": lay.total, "lists_sha256": file_sha256(lists_path), **written}


def trained_copy(index_file: Path, out: Path) -> None:
    """The trained quantizer of an on-disk index, with empty lists: what `--add` merges new shards into."""
    import faiss

    from embedsearch.store.faiss_index import save_index

    with c_stdout_to_stderr():
        idx = faiss.read_index(str(index_file), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = faiss.extract_index_ivf(idx)
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()  # the index owns and frees it
    ivf.ntotal = idx.ntotal = 0
    save_index(idx, out)


# --------------------------------------------------------------------------------------------- the work folder


def work_dir(index_dir: Path) -> Path:
    return index_dir / WORK_DIR


def read_plan(index_dir: Path) -> dict | None:
    p = work_dir(index_dir) / "plan.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def start_work(index_dir: Path, plan: dict) -> Path:
    """The work folder for `plan`: kept as it is when a killed run left one for the same plan (its trained index
    and finished shards are reused), emptied otherwise."""
    wd = work_dir(index_dir)
    if wd.is_symlink() or (wd.exists() and not wd.is_dir()):
        raise IndexStateError(f"{wd} is not a folder: remove it")
    if read_plan(index_dir) != plan:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(wd)
    wd.mkdir(exist_ok=True)
    if not (wd / "plan.json").exists():
        atomic_write_bytes(wd / "plan.json", json.dumps(plan, sort_keys=True).encode())
    return wd


def finish(index_dir: Path, keep: str | None) -> None:
    """After the manifest naming lists file `keep` is published: the work folder and older lists files go (a reader
    that has an old one mapped keeps reading it; the OS frees it when the reader closes it)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(work_dir(index_dir))
    for f in index_dir.glob("lists.*.ivfdata"):
        if LISTS_RE.match(f.name) and f.name != keep and not f.is_symlink():
            f.unlink(missing_ok=True)
