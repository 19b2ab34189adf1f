"""embedsearch: embed image datasets with vision backbones once, then search and evaluate from the index.

The library API (heavy modules load on first use, so `import embedsearch` stays instant; the names differ from
the submodules `build`, `search`, `evaluate` so that importing those never shadows them)::

    import embedsearch as es
    es.build_index("digits", backbone="pixels:8", name="digits-pixels")   # index a source
    ix = es.open_index("digits-pixels")
    es.search_index(ix, ids=[0], k=5).to_pandas()
    run = es.evaluate_index(ix, methods=["prototypes", "knn", "linear"])
    run.table().to_pandas()
    es.compare([ix, es.open_index("digits-vit")])
    es.classify(ix, "linear", ["my_digit.png"])
"""

__version__ = "0.1.0"


def open_index(name_or_path, root=None):
    """Open an index by name (under ./indexes or $EMBEDSEARCH_HOME) or path; see `embedsearch.reader.Index`."""
    from embedsearch.reader import Index

    return Index.open(name_or_path, root)


def build_index(source: str, *, name: str, backbone: str = "pixels", progress: bool = True, source_options=None, **config):
    """Index `source` (a spec like `digits`, a folder or a manifest); `config` takes `BuildConfig` fields."""
    from embedsearch.build import BuildConfig
    from embedsearch.build import build_index as _build
    from embedsearch.sources.datasets import open_source

    return _build(open_source(source, **(source_options or {})), BuildConfig(name=name, backbone=backbone,
                       **config), progress=progress)


def search_index(ix, **kwargs):
    from embedsearch.query.search import search as _search

    return _search(ix, **kwargs)


def evaluate_index(ix, **kwargs):
    from embedsearch.evaluate import evaluate as _evaluate

    return _evaluate(ix, **kwargs)


def compare(indexes):
    from embedsearch.report.tables import compare as _compare

    return _compare(indexes)


def classify(ix, probe: str, images, k: int = 3):
    from embedsearch.evaluate.probes import classify as _classify

    return _classify(ix, probe, images, k=k)
