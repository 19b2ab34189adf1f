"""The embedding column read straight from its data pages (store/pages.py) against pyarrow's decoding of the same
files: equal values whatever the shape, page v1 and v2, several row groups; other layouts fall back; damage is
never read as different vectors."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedsearch.core.errors import IndexStateError
from embedsearch.store import pages
from embedsearch.store import parts as store


def _pyarrow_vectors(path):
    col = pq.read_table(path).column("embedding").combine_chunks()
    d = col.type.list_size
    return col.values.to_numpy(zero_copy_only=False).reshape(-1, d)


def _write(path, v, **options):
    """A part as another writer might lay it out (pyarrow options differ from write_part's)."""
    d = v.shape[1]
    arr = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), d)
    pq.write_table(pa.table({"id": pa.array(np.arange(len(v)), pa.int64()), "embedding": arr}), path,
                   write_page_checksum=True, **options)


@pytest.fixture
def spy(monkeypatch):
    """Counts the parts `read_vectors` served (so a test knows which path read them)."""
    served = []
    real = pages.read_vectors
    monkeypatch.setattr(pages, "read_vectors", lambda *a, **k: served.append(a[0]) or real(*a, **k))
    return served


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("n,d", [(1, 1), (7, 3), (999, 3072), (2500, 768), (0, 16)])
def test_pages_equal_pyarrow(tmp_path, spy, dtype, n, d):
    # 999 × 3,072 float16 spans several 1 MB pages that end mid-row
    v = np.random.default_rng(n + d).normal(size=(n, d)).astype(dtype)
    p = tmp_path / "part-00000.parquet"
    store.write_part(p, np.arange(n) * 3, v, dtype, {})
    ids, got = store.read_part(p)
    assert spy == [p]
    assert got.dtype == np.dtype(dtype) and got.shape == (n, d)
    np.testing.assert_array_equal(got, v)
    np.testing.assert_array_equal(got, _pyarrow_vectors(p) if n else np.zeros((0, d)))
    assert ids.tolist() == list(range(0, 3 * n, 3))


def test_page_v2_and_several_row_groups_are_read_from_pages(tmp_path, spy):
    v = np.random.default_rng(1).normal(size=(3000, 384)).astype(np.float16)
    p = tmp_path / "p.parquet"
    _write(p, v, compression="none", use_dictionary=False, data_page_version="2.0", row_group_size=700)
    assert pq.ParquetFile(p).metadata.num_row_groups == 5
    ids, got = store.read_part(p)
    assert spy == [p]
    np.testing.assert_array_equal(got, v)
    assert ids.tolist() == list(range(3000))


@pytest.mark.parametrize("options", [{"compression": "zstd"}, {"compression": "none", "use_dictionary": True}])
def test_other_layouts_fall_back_to_pyarrow(tmp_path, spy, options):
    v = np.round(np.random.default_rng(2).normal(size=(500, 64)), 1).astype(np.float32)  # few values: a dictionary
    p = tmp_path / "p.parquet"
    _write(p, v, **options)
    ids, got = store.read_part(p)
    assert spy == []  # the column chunk's metadata ruled the page reader out
    np.testing.assert_array_equal(got, v)


def test_a_null_element_is_not_read_from_pages(tmp_path):
    """A page whose levels outnumber its values (a null element) is not what `read_vectors` reads: PageError, so
    the caller hands the part to pyarrow."""
    values = pa.array([1.0, None, 3.0, 4.0], pa.float32())
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": pa.array([0, 1], pa.int64()),
                             "embedding": pa.FixedSizeListArray.from_arrays(values, 2)}), p,
                   compression="none", use_dictionary=False, write_page_checksum=True)
    m = pq.ParquetFile(p).metadata
    chunk = pages.chunk_layout(m.row_group(0).column(1), "FLOAT")
    with pytest.raises(pages.PageError, match="nulls"):
        pages.read_vectors(p, [chunk], 2, 2, np.float32)


def test_no_flipped_bit_in_a_page_is_read_as_other_vectors(tmp_path):
    """Every bit of the first page header, and bits across the levels and values: the part either reads as it
    was written or is reported unreadable."""
    v = np.random.default_rng(3).normal(size=(40, 256)).astype(np.float16)
    good = tmp_path / "good.parquet"
    store.write_part(good, np.arange(40), v, "float16", {})
    m = pq.ParquetFile(good).metadata.row_group(0).column(1)
    start, length = m.data_page_offset, m.total_compressed_size
    raw = good.read_bytes()
    spots = [(i, b) for i in range(start, start + 40) for b in range(8)]
    spots += [(i, 0) for i in range(start + 40, start + length, 997)]
    bad = tmp_path / "bad.parquet"
    outcomes = {"same": 0, "refused": 0}
    for i, b in spots:
        data = bytearray(raw)
        data[i] ^= 1 << b
        bad.write_bytes(bytes(data))
        try:
            _, got = store.read_part(bad)
        except IndexStateError:
            outcomes["refused"] += 1
            continue
        np.testing.assert_array_equal(got, v, err_msg=f"bit {b} of byte {i} changed the vectors unnoticed")
        outcomes["same"] += 1
    assert outcomes["refused"] > len(spots) // 2, outcomes


def test_a_truncated_part_is_unreadable(tmp_path):
    p = tmp_path / "p.parquet"
    store.write_part(p, np.arange(100), np.ones((100, 512), np.float32), "float16", {})
    p.write_bytes(p.read_bytes()[:50_000])
    with pytest.raises(IndexStateError, match="unreadable"):
        store.read_part(p)


def test_a_crafted_negative_page_size_is_refused_not_looped_on(tmp_path):
    # PageHeader{type: DATA_PAGE, uncompressed_page_size: -5, compressed_page_size: -5} in the compact protocol:
    # field headers 0x15 (next field id, i32), zigzag(-5) = 9; a reader that stepped back by the size would loop
    header = bytes([0x15, 0x00, 0x15, 0x09, 0x15, 0x09, 0x00])
    p = tmp_path / "crafted.bin"
    p.write_bytes(header * 4)
    with pytest.raises(pages.PageError, match="sizes"):
        pages.read_vectors(p, [(0, len(header) * 4)], 1, 1, np.float32)


def test_the_embedding_leaf_is_found_whatever_the_column_order(tmp_path, spy):
    v = np.random.default_rng(4).normal(size=(30, 8)).astype(np.float32)
    p = tmp_path / "p.parquet"
    arr = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), 8)
    pq.write_table(pa.table({"label": pa.array(["a"] * 30), "embedding": arr, "id": pa.array(np.arange(30))}), p,
                   compression="none", use_dictionary=False, write_page_checksum=True)
    ids, got = store.read_part(p)
    assert spy == [p]
    np.testing.assert_array_equal(got, v)
    assert ids.tolist() == list(range(30))
