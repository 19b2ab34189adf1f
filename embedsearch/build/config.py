"""`BuildConfig`: what `embedsearch index` was asked, declared once, as four groups — the backbone (what the vectors
are), the FAISS index, the run (how fast, never what), the engine (where) — plus the build's own fields.

The dataclasses own every default: the CLI declares each option once (cli/options.py) with `default=None` and drops
what the user did not give, and the Python API's flat keywords (`es.build_index(..., index="IVF1024,Flat",
batch_size=32)`) are routed to their group by `BuildConfig.of`. `to_dict()` lands in the manifest (`build`) and
the run record; `from_dict` reads it back, including the flat layout indexes were written with before the groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from embedsearch.core.errors import EmbedsearchError, IndexStateError, SourceError
from embedsearch.models.config import BackboneConfig

DTYPES = ("float16", "float32")
ENGINES = ("local", "ray")
DEFAULT_FACTORY = "Flat"


def _whole(name: str, v, least: int) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
        raise SourceError(f"--{name} must be a whole number of at least {least} (got {v!r})")


@dataclass(frozen=True)
class FaissConfig:
    """The vector index: a FAISS factory string (cosine on normalized vectors) or `auto`."""

    factory: str = DEFAULT_FACTORY  # e.g. Flat, HNSW32, IVF1024,PQ32, or "auto" (see query/ann.auto_index)
    max_memory: int | None = None  # bytes the FAISS index may take (auto; on disk: the build's memory budget)
    on_disk: bool = False  # IVF lists in a file beside index.faiss, built in shards (store/ondisk.py)
    retrain: bool = False  # an on-disk index trains its quantizer again instead of keeping it (--add)
    target_recall: float = 0.95  # 10-recall@10 the auto index must reach on held-out queries
    max_latency_ms: float | None = None  # mean one-query latency the auto index must stay under


@dataclass(frozen=True)
class RunConfig:
    """How fast, never what: batch size is recorded with the space (batching changes a network's floats)."""

    batch_size: int | None = None  # None: the index's recorded batch size, else DEFAULT_BATCH_SIZE
    num_workers: int | None = None  # decode/preprocess workers (None: cores − 1)
    threads: int | None = None  # torch threads per forward (None: torch's default locally, --cpus-per-actor on Ray)
    part_size: int = 2048  # items per Parquet part (the unit of resume)

    def __post_init__(self):
        for name, least in (("batch-size", 1), ("workers", 0), ("threads", 1), ("part-size", 1)):
            _whole(name, getattr(self, {"workers": "num_workers"}.get(name, name.replace("-", "_"))), least)


@dataclass(frozen=True)
class EngineConfig:
    """Where parts are embedded; not part of the embedding space, so an index resumes or grows with either."""

    kind: str = "local"  # local | ray
    address: str | None = None  # Ray: local, auto, HOST:PORT or ray://HOST:PORT
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def __post_init__(self):
        if self.kind not in ENGINES:
            raise SourceError(f"unknown --engine {self.kind!r}: expected {' or '.join(ENGINES)}")
        _whole("actors", self.actors, 1)
        # checked here once, for the Python API and manifests alike (the CLI's ranges reject these first)
        for name, value, ok, rule in (("cpus-per-actor", self.cpus_per_actor, lambda v: v > 0, "> 0"),
                                      ("gpus-per-actor", self.gpus_per_actor, lambda v: v >= 0, "≥ 0")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise SourceError(f"--{name} must be {rule} (got {value!r})")


# the flat names of the Python API and of manifests written before the groups → (group, field)
_FLAT = {"backbone": ("backbone", "spec"), "index": ("faiss", "factory"), "engine": ("engine", "kind"),
         "ray_address": ("engine", "address")}
for _group, _cls in (("backbone", BackboneConfig), ("faiss", FaissConfig), ("run", RunConfig),
                     ("engine", EngineConfig)):
    for _f in fields(_cls):
        _FLAT.setdefault(_f.name, (_group, _f.name))


@dataclass(frozen=True)
class BuildConfig:
    """Everything `embedsearch index` was asked.

    >>> BuildConfig.of(name="d", backbone="pixels:8", index="HNSW32").faiss.factory
    'HNSW32'
    """

    name: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    faiss: FaissConfig = field(default_factory=FaissConfig)
    run: RunConfig = field(default_factory=RunConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    dtype: str = "float16"  # storage dtype of the vectors in Parquet
    seed: int = 0  # splits, FAISS training (and, through the backbone group, random-init weights)
    add: bool = False  # embed only the items a grown source gained
    vectors: str | None = None  # import vectors computed elsewhere instead of running a backbone
    root: str | None = None  # the folder holding indexes

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise SourceError(f"unknown --dtype {self.dtype!r}: expected {' or '.join(DTYPES)}")
        _whole("image-size", self.backbone.image_size, 1)
        _whole("resize", self.backbone.resize, 1)

    @classmethod
    def of(cls, **flat) -> BuildConfig:
        """From flat keywords (`backbone="timm:…"`, `index=`, `batch_size=`, `engine="ray"`, …): each goes to its
        group; `seed` seeds the build and the backbone's random init alike. An unknown keyword is one line."""
        top, groups = _route(flat, lambda k: SourceError(f"unknown build setting {k!r}"))
        return cls(backbone=BackboneConfig(**groups["backbone"]), faiss=FaissConfig(**groups["faiss"]),
                   run=RunConfig(**groups["run"]), engine=EngineConfig(**groups["engine"]), **top)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "build", **changes) -> BuildConfig:
        """The inverse of `to_dict`, checked field by field (an index is untrusted input); the flat layout written
        before the groups existed is read too. `changes`: top-level fields to set (repair: name, root, add)."""
        from embedsearch.core.schema import from_record

        if not isinstance(d, dict):
            raise IndexStateError(f"{where} is not an object")
        if not isinstance(d.get("backbone"), dict):  # the flat layout
            top, groups = _route(d, lambda k: IndexStateError(f"{where} has unknown field {k!r}"))
            d = {**top, **groups}
        parts = {}
        try:
            for name, kind in (("backbone", BackboneConfig), ("faiss", FaissConfig), ("run", RunConfig),
                               ("engine", EngineConfig)):
                parts[name] = from_record(kind, d.get(name, {}), f"{where}.{name}")
            top = from_record(_Top, {**{k: v for k, v in d.items() if k not in parts}, **changes}, where)
            return cls(**asdict(top), **parts)
        except EmbedsearchError as e:  # a field's own check (SourceError, SpecError): the manifest is at fault
            raise IndexStateError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def _route(flat: dict, unknown) -> tuple[dict, dict[str, dict]]:
    """Flat settings → (BuildConfig's own fields, {group: fields}); `seed` also seeds the backbone's random init.
    `unknown(name)` is the error for a name no group has."""
    groups: dict[str, dict] = {"backbone": {}, "faiss": {}, "run": {}, "engine": {}}
    top = {}
    own = {f.name for f in fields(_Top)}
    for k, v in flat.items():
        if k in own:
            top[k] = v
        elif k in _FLAT:
            groups[_FLAT[k][0]][_FLAT[k][1]] = v
        else:
            raise unknown(k)
    if "seed" in top:
        groups["backbone"].setdefault("seed", top["seed"])
    return top, groups


@dataclass(frozen=True)
class _Top:
    """BuildConfig's own fields, checked apart from its groups (from_record checks one level)."""

    name: str
    dtype: str = "float16"
    seed: int = 0
    add: bool = False
    vectors: str | None = None
    root: str | None = None

