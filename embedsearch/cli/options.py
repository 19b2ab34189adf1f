"""Option groups declared once, each handing its command one typed object (the sqlite-utils way of sharing a
declaration, with timm's rule that `None` means "the dataclass's default").

- `backbone_options(...)` → `backbone: BackboneConfig` (index; `inspect` and `layers` take a subset);
- `faiss_options` → `faiss: FaissConfig`, `run_options` → `run: RunConfig`, `engine_options` → `engine:
  EngineConfig` (index; `verify --repair` takes the engine and `--threads`).

Every option has `default=None`: the dataclass owns the default, and the help shows it from there. Choices come from
the library's constants and registries, so a new pooling, precision or backbone kind reaches the CLI by itself.
Adding a preprocessing flag is one field on `BackboneConfig` (with `metadata={"help": …}`) plus its use: the option
is derived from the field here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import MISSING, fields

import click

from embedsearch.core.errors import EmbedsearchError


class Size(click.ParamType):
    """A byte count such as 2GB or 512MiB, checked before any work starts; the text is kept (messages quote it)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        from embedsearch.core.units import parse_size

        try:
            parse_size(value, f"--{param.name.replace('_', '-')}" if param else "size")
        except EmbedsearchError as e:
            self.fail(str(e), param, ctx)
        return value


class Bytes(Size):
    """A byte count as Size checks it, converted to bytes (for a config field that holds a number)."""

    def convert(self, value, param, ctx):
        from embedsearch.core.units import parse_size

        return value if isinstance(value, int) else parse_size(super().convert(value, param, ctx))


class Finite(click.FloatRange):
    """A float range that also refuses nan and inf (click's FloatRange lets nan through: nan < 0 is False)."""

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


class Names(click.ParamType):
    """Comma-separated names from a registry, spaces around them allowed (`--methods "knn, linear"`): a tuple in
    the order given. `choices` is called only when a value or the help needs it, so a registry that imports numpy
    is not imported by every command."""

    name = "NAMES"

    def __init__(self, choices, what: str = "method"):
        self.choices, self.what = choices, what

    def get_metavar(self, param, ctx):
        return "[" + "|".join(self.choices()) + "],…"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        names = tuple(n.strip() for n in str(value).split(",") if n.strip())
        known = tuple(self.choices())
        if not names:
            self.fail(f"no {self.what} named: expected some of {', '.join(known)}", param, ctx)
        bad = [n for n in names if n not in known]
        if bad:
            self.fail(f"unknown {self.what} {bad[0]!r}: expected one of {', '.join(known)}", param, ctx)
        return names


def _eval_methods() -> tuple[str, ...]:
    from embedsearch.evaluate.methods import ORDER

    return ORDER


EVAL_METHODS = Names(_eval_methods)  # `eval --methods`: the evaluation registry's names, in its order


def output_file(ctx, param, value):
    """An output file option: its folder must exist and be writable, checked before any work (not after)."""
    import os
    from pathlib import Path

    if value is None:
        return None
    parent = Path(value).parent
    if not parent.is_dir():
        raise click.BadParameter(f"folder {parent} does not exist (create it first)", ctx, param)
    if not os.access(parent, os.W_OK):
        raise click.BadParameter(f"folder {parent} is not writable", ctx, param)
    return value


# Every option name more than one command or group takes, spelled once: commands declare it with `option(key,
# ...)`, the groups below with `_Opt(key, ...)`; what differs between commands (a default, the help) stays with
# the command, because it differs in meaning too (pretrain's --image-size 0 is "the data's size").
NAMES = {
    "spec": ("-b", "--backbone"), "weights": ("--weights",), "pretrained": ("--random-init",),
    "image_size": ("--image-size",), "layer": ("--layer",), "device": ("--device",), "batch_size": ("--batch-size",),
    "seed": ("--seed",), "where": ("--where",), "train": ("--train",), "test": ("--test",), "method": ("--method",),
    "epochs": ("--epochs",), "out": ("-o", "--out"), "k": ("-k",), "threshold": ("--threshold",),
    "fresh": ("--fresh",), "html": ("--html",), "trust_code": ("--trust-code",), "methods": ("-m", "--methods"),
    # the rest of the backbone group (`_backbone_opts`)
    "pool": ("--pool",), "resize": ("--resize",), "mean": ("--mean",), "std": ("--std",),
    "interpolation": ("--interpolation",), "precision": ("--precision",), "channels_last": ("--channels-last",),
}


def option(key: str, *decls: str, **attrs):
    """The click option NAMES[key] (`decls`: a parameter name, or one more flag such as `-o`)."""
    return click.option(*NAMES[key], *decls, **attrs)


def seed_option(default: int = 0, help: str | None = None):
    """--seed: an int, its default shown."""
    return option("seed", type=int, default=default, show_default=True, help=help)


def selection_options(train_help: str | None = None, test_help: str | None = None, dest: bool = True):
    """--train and --test: the SQL predicates selecting train and test items, defaulting to the splits
    (`evaluate.DEFAULT_TRAIN`/`DEFAULT_TEST`); `dest`: hand them as train_where / test_where."""
    train_default, test_default = "split = 'train'", "split = 'test'"  # evaluate.runner's, without importing numpy

    def deco(f):
        f = option("test", *(("test_where",) if dest else ()), default=test_default, show_default=True,
                   help=test_help)(f)
        return option("train", *(("train_where",) if dest else ()), default=train_default, show_default=True,
                      help=train_help)(f)

    return deco


top_option = click.option("-n", "top", type=click.IntRange(1), default=50, show_default=True, help="Rows to print.")

root_option = click.option("--root", type=click.Path(file_okay=False), default=None, envvar="EMBEDSEARCH_HOME",
                           help="Directory holding indexes (default ./indexes, or $EMBEDSEARCH_HOME).")

trust_code_option = option(
    "trust_code", is_flag=True,
    help="Run the code this index's py:/hub: backbone names (after you have read it): recorded on this machine, so "
    "later commands need not repeat it. The code must still hash as the index recorded it.")


def html_option(help_text: str, *names: str):
    return option("html", *names, "html_file", type=click.Path(dir_okay=False), callback=output_file,
                  help=help_text)


def _default(cls, name: str):
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else None


def _shown(cls, name: str, text: str) -> str:
    d = _default(cls, name)
    return text if d in (None, False) else f"{text}  [default: {d}]"


def _group(f, options, make):
    """Apply `options` (click decorators whose parameter names `make` takes) and hand `f` the object `make` builds
    from the values given (None: not given, so the dataclass's default)."""
    names = [o.name for o in options]

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        given = {n: kwargs.pop(n) for n in names if n in kwargs}
        return f(*args, **make({k: v for k, v in given.items() if v is not None}), **kwargs)

    for o in reversed(options):
        wrapper = o.decorator(wrapper)
    return wrapper


class _Opt:
    """One option: its click decorator and the parameter name it fills."""

    def __init__(self, name: str, *decls: str, **attrs):
        self.name = name
        self.decorator = click.option(*(decls or NAMES[name]), name, default=None, **attrs)


def _backbone_opts(which: tuple[str, ...], required: tuple[str, ...] = (), help: dict | None = None) -> list[_Opt]:
    from embedsearch.models.config import INTERPOLATIONS, POOLS, PRECISIONS, BackboneConfig
    from embedsearch.models.specs import BACKBONE_KINDS, valid_kinds

    b = BackboneConfig
    every = {
        "spec": dict(help=_shown(b, "spec", f"{valid_kinds(BACKBONE_KINDS)} (see `backbones`).")),
        "weights": dict(type=click.Path(dir_okay=False),
                        help="Local weights for the architecture: safetensors, a torch file read with "
                        "weights_only=True (a training script's checkpoint), or a Hugging Face folder."),
        "pretrained": dict(is_flag=True, flag_value=False,
                           help="Random (seeded) weights: for tests and speed benchmarks only."),
        "image_size": dict(type=click.IntRange(min=1),
                           help="Override the model's input size (recorded in the manifest)."),
        "pool": dict(type=click.Choice(POOLS), help=_shown(
            b, "pool", "ViT pooling, or how a --layer's tensor is pooled; `tokens`/`flatten` keep the whole map "
            "(large).")),
        "layer": dict(help="Features from this submodule's output (NAME) or input "
                      "(NAME:input); see `layers`."),
        "resize": dict(type=click.IntRange(min=1), help="py: models: resize the shorter side "
                       "to this before the centre crop of --image-size (default: --image-size)."),
        "mean": dict(help="py: models: normalisation mean, e.g. 0.485,0.456,0.406."),
        "std": dict(help="py: models: normalisation std, e.g. 0.229,0.224,0.225."),
        "interpolation": dict(type=click.Choice(INTERPOLATIONS),
                              help="py: models: resize interpolation (default bilinear)."),
        "device": dict(help=_shown(b, "device", "auto | cpu | cuda[:N].")),
        "precision": dict(type=click.Choice(PRECISIONS), help=_shown(
            b, "precision", "Autocast precision, recorded with the index and used for query images; auto = "
            "bf16/fp16 on CUDA, bf16 on CPUs with native bf16 instructions (AVX512-BF16/AMX), else fp32.")),
        "channels_last": dict(is_flag=True,
                              help="channels_last memory format (helps CNNs)."),
    }
    return [_Opt(w, required=w in required, **{**every[w], **({"help": help[w]} if w in (help or {}) else {})})
            for w in which]


BUILD_BACKBONE = ("spec", "weights", "pretrained", "image_size", "pool", "layer", "resize", "mean", "std",
                  "interpolation", "device", "precision", "channels_last")


def backbone_options(*which: str, as_config: bool = True, required: tuple[str, ...] = (), help: dict | None = None,
                     defaults: bool = True):
    """The backbone group (`which`: a subset of BUILD_BACKBONE, default all). `as_config`: hand the command one
    `backbone: BackboneConfig`; else the values by name (for commands that take a spec as an argument), with the
    dataclass's defaults for what was not given, or None (`defaults=False`: classify tells "not given" apart).
    `required`: options the command needs; `help`: a command's own help for some of them."""

    def deco(f):
        from embedsearch.models.config import BackboneConfig

        opts = _backbone_opts(which or BUILD_BACKBONE, required, help)
        if as_config:
            return _group(f, opts, lambda v: {"backbone": BackboneConfig(**v)})
        return _group(f, opts, lambda v: {o.name: v.get(o.name, _default(BackboneConfig, o.name) if defaults
                                                         else None) for o in opts})

    return deco


def faiss_options(f):
    """The FAISS group → `faiss: FaissConfig`."""
    from embedsearch.build.config import FaissConfig

    c = FaissConfig
    opts = [
        _Opt("factory", "--index", help=_shown(c, "factory", "FAISS factory string, e.g. Flat, HNSW32, IVF1024,PQ32 "
             "(cosine on normalized vectors), or `auto`: choose and tune one for --max-memory and --target-recall.")),
        _Opt("max_memory", "--max-memory", type=Bytes(), help="With --index auto: the most the FAISS index may take, "
             "e.g. 2GB, 512MiB (when no in-memory index fits, IVF-Flat with its lists on disk); with --on-disk: the "
             "build's memory budget (shards of a quarter of it)."),
        _Opt("on_disk", "--on-disk", is_flag=True, help="Keep an IVF index's lists in a file beside index.faiss "
             "(mapped, for indexes larger than memory); built in shards, merged on disk; the index keeps this on "
             "--add."),
        _Opt("retrain", "--retrain", is_flag=True, help="With --add on an on-disk index: train the quantizer again "
             "on a new sample instead of keeping it (see the drift in `index-quality`)."),
        _Opt("target_recall", "--target-recall", type=click.FloatRange(0, 1), help=_shown(
            c, "target_recall", "With --index auto: 10-recall@10 to reach on held-out queries.")),
        _Opt("max_latency_ms", "--max-latency-ms", type=Finite(min=0, min_open=True),
             help="With --index auto: mean one-query latency to stay under."),
    ]
    return _group(f, opts, lambda v: {"faiss": FaissConfig(**v)})


THREADS = _Opt("threads", "--threads", type=click.IntRange(min=1), help="torch threads per forward (default: "
               "torch's own locally, --cpus-per-actor on Ray); pin it to compare engines bit for bit.")


def run_options(f):
    """The run group → `run: RunConfig`: how fast, never what."""
    from embedsearch.build.config import RunConfig

    opts = [
        _Opt("batch_size", type=click.IntRange(min=1), help="Images per forward (default 64; a "
             "resume or --add keeps the index's own: batching changes a network's float results)."),
        _Opt("num_workers", "--workers", type=click.IntRange(min=0), help="Decode/preprocess workers (default: "
             "cores − 1)."),
        THREADS,
        _Opt("part_size", "--part-size", type=click.IntRange(min=1), help=_shown(
            RunConfig, "part_size", "Items per Parquet part (unit of resume).")),
    ]
    return _group(f, opts, lambda v: {"run": RunConfig(**v)})


def _engine_opts() -> list[_Opt]:
    from embedsearch.build.config import ENGINES, EngineConfig

    c = EngineConfig
    return [
        _Opt("kind", "--engine", type=click.Choice(ENGINES), help=_shown(
            c, "kind", "Embed here, or one part per task on Ray actors (pip install 'embedsearch[ray]'); the "
            "output is the same, and an index resumes or grows with either.")),
        _Opt("address", "--address", help="With --engine ray: local (a private cluster, the default), auto (the "
             "running one), HOST:PORT or ray://HOST:PORT."),
        _Opt("actors", "--actors", type=click.IntRange(min=1), help="With --engine ray: backbone actors (default: "
             "as many as the cluster's CPUs or GPUs allow)."),
        _Opt("cpus_per_actor", "--cpus-per-actor", type=click.FloatRange(min=0, min_open=True), help=_shown(
            c, "cpus_per_actor", "With --engine ray: CPUs each actor reserves (and its torch threads).")),
        _Opt("gpus_per_actor", "--gpus-per-actor", type=click.FloatRange(min=0), help=_shown(
            c, "gpus_per_actor", "With --engine ray: GPUs each actor reserves (> 0: the actors run on CUDA).")),
    ]


def _engine(v: dict):
    from embedsearch.build.config import EngineConfig

    if v.get("kind", "local") != "ray" and (v.get("address") or v.get("actors")):
        raise click.UsageError("--address and --actors apply to --engine ray")
    return {"engine": EngineConfig(**v)}


def engine_options(f):
    """The engine group → `engine: EngineConfig`: where parts are embedded, never what they hold."""
    return _group(f, _engine_opts(), _engine)


def threads_option(f):
    """--threads alone (verify --repair: the run's other settings are the index's own)."""
    return _group(f, [THREADS], lambda v: {"threads": v.get("threads")})
