import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedsearch.store import parts as store


@pytest.mark.parametrize("dtype,arrow", [("float16", pa.float16()), ("float32", pa.float32())])
def test_part_schema_and_round_trip(tmp_path, dtype, arrow):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(10, 24)).astype(np.float32)
    info = store.write_part(tmp_path / "part-00000.parquet", np.arange(10) * 7, v, dtype, {"backbone": "x"})
    schema = pq.read_schema(tmp_path / "part-00000.parquet")
    assert schema.field("id").type == pa.int64()
    assert schema.field("embedding").type == pa.list_(arrow, 24)
    assert store.part_metadata(tmp_path / "part-00000.parquet") == {"backbone": "x"}
    ids, got = store.read_part(tmp_path / "part-00000.parquet")
    assert ids.tolist() == list(range(0, 70, 7))
    np.testing.assert_array_equal(got, v.astype(store.DTYPES[dtype]))
    assert info["rows"] == 10 and info["sha256"] == store.file_sha256(tmp_path / "part-00000.parquet")
    assert not list(tmp_path.glob(".*tmp*"))


def test_float16_storage_is_close_to_two_bytes_per_dim(tmp_path):
    n, d = 4096, 384
    v = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    info = store.write_part(tmp_path / "p.parquet", np.arange(n), v, "float16", {})
    assert info["bytes"] / n <= 1.10 * 2 * d


def test_non_finite_rows_are_found_after_the_cast(tmp_path):
    v = np.ones((4, 3), np.float32)
    v[1, 0] = np.nan
    v[2, 1] = 1e6  # finite in float32, inf in float16
    v[3] = 0
    assert store.finite_rows(v, "float16").tolist() == [True, False, False, False]
    assert store.finite_rows(v, "float32").tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="non-finite"):
        store.write_part(tmp_path / "never.parquet", np.arange(4), v, "float16", {})
