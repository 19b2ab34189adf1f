"""The FAISS index: built from the Parquet parts on L2-normalized vectors, ids = item ids, GPU behind one seam."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from embedsearch.core.errors import ConfigError, IndexStateError, QueryError
from embedsearch.core.vectors import l2_normalize

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "Flat"
TRAIN_SAMPLE_PER_CENTROID = 50  # FAISS warns under 39 points per centroid


def gpu_count() -> int:
    """The GPU seam: how many GPUs faiss can use (0 with faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _to_gpu(index):
    import faiss

    return faiss.index_cpu_to_all_gpus(index)


def _to_cpu(index):
    import faiss

    return faiss.index_gpu_to_cpu(index)


def make_index(dim: int, factory: str):
    """A FAISS index for a factory string, wrapped in IDMap2 when the type cannot store ids itself."""
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1][:160]
        raise ConfigError(f"bad FAISS factory string {factory!r} for dim {dim}: {msg}") from None
    if faiss.try_extract_index_ivf(index) is None and not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.IndexIDMap2(index)
    return index


def build_index(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    dim: int,
    factory: str = DEFAULT_FACTORY,
    *,
    train_sample: np.ndarray | None = None,
    use_gpu: bool | None = None,
):
    """Add (ids, vectors) chunks to a new index; `train_sample` trains IVF/PQ types first. Returns a CPU index."""
    index = make_index(dim, factory)
    gpu = (gpu_count() > 0) if use_gpu is None else use_gpu
    work = index
    if not index.is_trained:
        if train_sample is None or len(train_sample) == 0:
            raise ConfigError(f"FAISS index {factory!r} needs training vectors")
        if gpu:
            work = _to_gpu(index)
        work.train(l2_normalize(train_sample))
    elif gpu:
        work = _to_gpu(index)
    for ids, vecs in chunks:
        if len(ids):
            work.add_with_ids(l2_normalize(vecs), np.ascontiguousarray(ids, dtype=np.int64))
    return _to_cpu(work) if work is not index else index


def train_sample_size(factory: str, n: int) -> int:
    """Enough points for k-means (FAISS warns under 39 per centroid) without reading everything."""
    import re

    m = re.search(r"IVF(\d+)", factory)
    nlist = int(m.group(1)) if m else 256
    return min(n, max(TRAIN_SAMPLE_PER_CENTROID * nlist, 10_000))


def index_bytes(index) -> int:
    """Serialized size of an index: what it takes on disk and, loaded without mmap, in memory (counted, not held)."""
    import faiss

    n = 0

    def count(b) -> int:
        nonlocal n
        n += len(b)
        return len(b)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return n


def save_index(index, path: Path) -> dict:
    """Write atomically, streaming (no serialized copy of the index in memory); returns the bytes and sha256."""
    import faiss

    from embedsearch.core.files import atomic_write

    return atomic_write(path, lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))


def load_index(path: Path, mmap: bool = False, params: dict | None = None, on_disk: bool = False,
               lists_file: str | None = None):
    """Read a FAISS file; `mmap` maps flat codes and IVF lists from the file instead of reading them into memory
    (pages come from the OS cache on demand, and the old file stays valid for readers when a rebuild replaces it).
    `params` are the recorded search-time settings (nprobe, efSearch). `on_disk`: an IVF index whose lists file
    sits beside it (store/ondisk.py), opened read-only from this folder wherever it was built; its lists are
    always mapped."""
    import faiss

    from embedsearch.core.output import c_stdout_to_stderr

    if not path.is_file():
        raise IndexStateError(f"FAISS file {path} is missing; run `embedsearch verify --repair`")
    # The FAISS file names its own lists file, and FAISS maps whatever that name points at: another file of the
    # folder, a link out of it, or (without SAME_DIR) any absolute path. So: no link anywhere beside it, SAME_DIR
    # always (an in-memory index that claims on-disk lists is confined too), and the name checked after reading.
    for f in path.parent.iterdir():
        if f.is_symlink():
            raise IndexStateError(f"{f} is a symbolic link (to {os.readlink(f)}); an index's files must live inside "
                                  "its folder: replace the link with the file itself")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR
    if on_disk:
        flags |= faiss.IO_FLAG_READ_ONLY
    elif mmap:
        flags |= faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
    try:
        with c_stdout_to_stderr(discard=True):  # FAISS says where it found the lists file, on every open
            index = faiss.read_index(str(path), flags)
    except RuntimeError as e:
        raise IndexStateError(f"FAISS file {path} is unreadable: {str(e).strip().splitlines()[-1][:120]}") from None
    lists = ondisk_lists_name(index)
    if lists is not None and (not on_disk or lists != (lists_file or lists)):
        raise IndexStateError(f"FAISS file {path} names the lists file {lists!r}, not the one its manifest records "
                              f"({lists_file or 'none'}): run `embedsearch verify --repair`")
    set_params(index, params)
    return index


def ondisk_lists_name(index) -> str | None:
    """The file name an IVF index's on-disk inverted lists were read from (None: the lists are in memory)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    il = faiss.downcast_InvertedLists(ivf.invlists)
    return Path(il.filename).name if isinstance(il, faiss.OnDiskInvertedLists) else None


def set_params(index, params: dict | None) -> None:
    """Apply search-time parameters (nprobe, efSearch) through any wrapper (IDMap, OPQ, ...)."""
    import faiss

    ps = faiss.ParameterSpace()
    for k, v in (params or {}).items():
        ps.set_index_parameter(index, k, v)


def unwrap(index):
    """The index doing the work inside IDMap / IDMap2 / OPQ wrappers."""
    import faiss

    inner = faiss.downcast_index(index)
    while isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        inner = faiss.downcast_index(inner.index)
    return inner


def _filter_params(index, sel):
    """Search parameters carrying an id selector, typed for the index inside any IDMap/OPQ wrapper so that its own
    nprobe / efSearch still apply (FAISS's IVF refuses untyped parameters)."""
    import faiss

    inner = unwrap(index)
    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=inner.nprobe)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch)
    return faiss.SearchParameters(sel=sel)


FP16_GEMM_MIN_QUERIES = 20  # from this many queries on, a matrix product beats per-vector loops (measured)
BLAS_FROM_QUERIES = 20  # FAISS 1.15 switches flat search to BLAS only when nq·d ≥ 128,000 (334 queries at 384-d);
# on the 2-core CI machine 20–300 queries then ran at 18–20 GFLOP/s instead of 44–130 with BLAS (docs/benchmarks/search.md)
FP16_BLOCK = 16384  # database rows decoded to float32 at a time (25 MB at 384-d)


@contextmanager
def _threads(n: int | None):
    """Run FAISS with n OpenMP threads. One query against a flat index runs 2× faster on one thread than on two
    (measured on the 2-core CI machine, docs/benchmarks/search.md): FAISS splits it across threads badly."""
    import faiss

    if n is None:
        yield
        return
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _is_fp16_flat(inner) -> bool:
    import faiss

    return isinstance(inner, faiss.IndexScalarQuantizer) and inner.sq.qtype == faiss.ScalarQuantizer.QT_fp16


def use_blas_from(d: int) -> None:
    """Make FAISS's flat search use BLAS from BLAS_FROM_QUERIES queries of dim d on (a process-wide FAISS setting)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES * d


def pad_to(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen (nq, k') results to k columns with score -inf and id -1 (for merging results of small blocks)."""
    if scores.shape[1] >= k:
        return scores, ids
    extra = k - scores.shape[1]
    return (np.hstack([scores, np.full((len(scores), extra), -np.inf, np.float32)]),
            np.hstack([ids, np.full((len(ids), extra), -1, np.int64)]))


def exact_topk(chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int, normalize: bool = True):
    """Exact cosine top-k of `queries` over chunks of (ids, vectors), one chunk in memory at a time: (scores, ids),
    padded with score -inf / id -1 when there are fewer than k vectors; `normalize=False` when queries and
    chunks are unit rows already. The exact top-k over id-carrying chunks (ground truth for the ANN
    measurements, the fp16 flat search below); the exact search over a bank of vectors — certified top-k,
    threshold joins — is query/exact.py's, a layer above: this module, in the store, cannot call it."""
    import faiss

    q = l2_normalize(queries) if normalize else np.ascontiguousarray(queries, np.float32)
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for ids, v in chunks:
        if not len(ids):
            continue
        flat = faiss.IndexFlatIP(q.shape[1])
        flat.add(l2_normalize(v) if normalize else np.ascontiguousarray(v, np.float32))
        s, pos = flat.search(q, min(k, len(ids)))
        s, got = pad_to(s, np.where(pos >= 0, np.asarray(ids, np.int64)[np.maximum(pos, 0)], -1), k)
        heap.add_result(np.ascontiguousarray(s), np.ascontiguousarray(got))
    heap.finalize()
    return heap.D, heap.I


def _fp16_gemm_search(index, inner, q: np.ndarray, k: int):
    """Exact search over an `SQfp16` index for a batch of queries: decode blocks of rows to float32 and multiply
    (BLAS), instead of FAISS's per-vector fp16 loop, which reaches about a fifth of the machine's FLOP/s."""
    import faiss

    n = inner.ntotal
    blocks = ((np.arange(b0, min(b0 + FP16_BLOCK, n)), inner.reconstruct_n(b0, min(FP16_BLOCK, n - b0)))
              for b0 in range(0, n, FP16_BLOCK))
    scores, ids = exact_topk(blocks, q, k, normalize=False)
    if inner is not faiss.downcast_index(index):  # IDMap2: positions → ids
        id_map = faiss.vector_to_array(faiss.downcast_index(index).id_map)
        ids = np.where(ids >= 0, id_map[np.maximum(ids, 0)], -1)
    return scores, ids


def search(index, queries: np.ndarray, k: int, subset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k: (scores, ids) each (nq, k'), k' ≤ k when the index is small.

    An approximate index may find fewer than k for some queries: those slots hold id -1 and score -inf, and columns
    that are padding for every query are cut. Callers showing hits must skip id -1 (see `search.hits`).
    """
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != index.d:
        raise QueryError(f"query vectors have shape {q.shape}; this index holds {index.d}-d vectors")
    if not np.isfinite(q).all():
        bad = int(np.flatnonzero(~np.isfinite(q).all(axis=1))[0])
        raise QueryError(f"query vector {bad} contains NaN or Inf")
    if not np.any(q, axis=1).all():  # cosine to a zero vector is undefined: every score would read 0
        raise QueryError(f"query vector {int(np.flatnonzero(~np.any(q, axis=1))[0])} is all zeros: it has no direction")
    if k < 1:
        raise QueryError(f"-k must be at least 1 (got {k})")
    if index.ntotal == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    kk = min(k, index.ntotal if subset is None else len(subset))
    if kk == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    import faiss

    use_blas_from(index.d)
    inner = unwrap(index)
    if subset is None and len(q) >= FP16_GEMM_MIN_QUERIES and _is_fp16_flat(inner):
        scores, ids = _fp16_gemm_search(index, inner, l2_normalize(q), kk)
    elif subset is None:
        with _threads(1 if len(q) == 1 and isinstance(inner, faiss.IndexFlat) else None):
            scores, ids = index.search(l2_normalize(q), kk)
    else:  # filtered search: FAISS skips ids outside the selection (works through IDMap and IVF alike)
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(subset, dtype=np.int64))
        scores, ids = index.search(l2_normalize(q), kk, params=_filter_params(index, sel))
    scores[ids < 0] = -np.inf
    keep = (ids >= 0).any(axis=0)
    return scores[:, keep], ids[:, keep]
