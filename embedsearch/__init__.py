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


def open_index(name_or_path, root=None, *, model=None, transform=None, trust_code: bool = False):
    """Open an index by name (under ./indexes or $EMBEDSEARCH_HOME) or path; see `embedsearch.reader.Index`. An index
    built from a Python module takes the same `model` and `transform` again to query images. `trust_code`: run the
    `py:`/`hub:` code the index names for query images (code you built with yourself needs no flag)."""
    from embedsearch.reader import Index

    ix = Index.open(name_or_path, root, trust_code=trust_code)
    if model is not None:
        ix.attach_module(model, transform)
    return ix


def build_index(source: str, *, name: str, backbone: str = "pixels", progress: bool = True, source_options=None,
                model=None, transform=None, model_name: str | None = None, **config):
    """Index `source` (a spec like `digits`, a folder or a manifest); `config` takes `BuildConfig` fields.

    With `model` (a ready torch.nn.Module) and `transform` (PIL image → tensor), that model is the backbone — no
    file to write; it is recorded as `module:MODEL_NAME` (default: its class name) with its weights hash. `pool`
    and `layer` in `config` apply to its output as to any backbone's.

    >>> es.build_index("digits", name="mine", model=net, transform=t)   # doctest: +SKIP
    """
    from embedsearch.build import BuildConfig
    from embedsearch.build import build_index as _build
    from embedsearch.sources.datasets import open_source

    ready = None
    if model is not None or transform is not None:
        from embedsearch.models.backbones import module_backbone

        model_name = model_name or type(model).__name__
        backbone = f"module:{model_name}"
        ready = module_backbone(model, transform, model_name, pool=config.get("pool", "default"),
                                layer=config.get("layer"))
    return _build(open_source(source, **(source_options or {})), BuildConfig.of(name=name, backbone=backbone,
                                                                                 **config),
                  progress=progress, backbone=ready)


def search_index(ix, **kwargs):
    from embedsearch.query.search import search as _search

    return _search(ix, **kwargs)


def evaluate_index(ix, **kwargs):
    from embedsearch.evaluate.runner import evaluate as _evaluate

    return _evaluate(ix, **kwargs)


def compare(indexes):
    from embedsearch.report.tables import compare as _compare

    return _compare(indexes)


def classify(ix, probe: str, images, k: int = 3):
    from embedsearch.evaluate.probes import classify as _classify

    return _classify(ix, probe, images, k=k)
