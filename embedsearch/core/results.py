"""Result rows that are plain lists of dicts and also convert to Arrow and pandas tables."""

from __future__ import annotations


class Rows(list):
    """A list of dicts (what `--json` prints) with `to_arrow()` and `to_pandas()`."""

    def to_dicts(self) -> list[dict]:
        return list(self)

    def to_arrow(self):
        import pyarrow as pa

        return pa.Table.from_pylist(list(self))

    def to_pandas(self):
        try:
            import pandas  # noqa: F401 — pyarrow's to_pandas needs it, and says so less plainly
        except ImportError:
            from embedsearch.core.errors import EmbedsearchError

            raise EmbedsearchError("to_pandas() needs pandas: pip install 'embedsearch[pandas]'") from None
        return self.to_arrow().to_pandas()
