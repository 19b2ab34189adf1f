"""Source spec strings (`digits`, `mnist:DIR`, `cifar10:DIR`, `cifar100:DIR`, `hf-dataset:DIR`, a folder, a manifest,
webdataset shards), parsed in exactly one place; an unknown one lists the valid kinds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from embedsearch.core.errors import SpecError
from embedsearch.sources.shards import looks_like_shards

SOURCE_KINDS = {
    "digits": "digits                 scikit-learn's embedded 8×8 digits (offline default; seeded 75/25 split)",
    "mnist": "mnist:DIR              MNIST idx files (gzipped or not) with the official train/test split",
    "cifar10": "cifar10:DIR            CIFAR-10 python batches with the official train/test split",
    "cifar100": "cifar100:DIR           CIFAR-100 python batches (fine labels) with the official split",
    "folder": "DIR                    ImageFolder layout (class subfolders, optionally under train/ val/ test/)",
    "manifest": "FILE.csv|FILE.parquet  a manifest with a `path` column (+ optional id, label, split, metadata)",
    "webdataset": "SHARDS.tar             webdataset shards: a.tar,b.tar or a brace pattern, e.g. "
                  "'shards/{00000..00127}.tar' (KEY.jpg + KEY.txt/.json/.cls)",
    "hf-dataset": "hf-dataset:DIR         a Hugging Face `datasets` dataset: a save_to_disk folder, the Hub's Parquet "
                  "layout (data/train-00000-of-00001.parquet), the datasets cache, or OWNER/NAME in the hub cache; "
                  "options DIR?split=test&label=COL&image=COL&config=NAME",
}


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    location: str | None = None
    raw: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _valid(kinds: dict[str, str]) -> str:
    return "; ".join(v.split("  ")[0].strip() for v in kinds.values())


def parse_source(spec: str) -> SourceSpec:
    """Parse `digits`, `mnist:DIR`, `cifar10:DIR`, `cifar100:DIR`, `hf-dataset:DIR`, a folder, a manifest file or .tar
    shards."""
    spec = spec.strip()
    if spec == "digits":
        return SourceSpec("digits", None, raw=spec)
    if spec.startswith("hf-dataset:"):
        rest = spec[len("hf-dataset:"):]
        if not rest.strip():
            raise SpecError(f"source {spec!r} needs a directory: hf-dataset:DIR (or OWNER/NAME in the hub cache)")
        return SourceSpec("hf-dataset", rest, raw=spec)
    if looks_like_shards(spec):
        return SourceSpec("webdataset", spec, raw=spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("mnist", "cifar10", "cifar100"):
        if not rest:
            raise SpecError(f"source {spec!r} needs a directory: {kind}:DIR")
        return SourceSpec(kind, rest, raw=spec)
    path = Path(spec)
    if path.is_dir():
        return SourceSpec("folder", str(path), raw=spec)
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        if not path.is_file():
            raise SpecError(f"manifest {spec} does not exist")
        return SourceSpec("manifest", str(path), raw=spec)
    if sep and len(kind) > 1 and not path.exists():
        raise SpecError(f"unknown source {spec!r}: expected one of {_valid(SOURCE_KINDS)}")
    raise SpecError(f"source {spec!r} is not a directory or a .csv/.parquet manifest (expected one of {_valid(SOURCE_KINDS)})")
