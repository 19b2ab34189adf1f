"""The `embedsearch` command line: a thin click layer; each command parses, calls one library function, prints."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys

import click

from embedsearch.build.config import DTYPES
from embedsearch.cli.options import (
    EVAL_METHODS,
    Bytes,
    Finite,
    Names,
    Size,
    backbone_options,
    engine_options,
    faiss_options,
    html_option,
    option,
    output_file,
    root_option,
    run_options,
    seed_option,
    selection_options,
    threads_option,
    top_option,
    trust_code_option,
)
from embedsearch.core.errors import EmbedsearchError
from embedsearch.core.output import emit, emit_rows, output_options


def _handle_errors(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from embedsearch.core.progress import INTERRUPTS

        try:
            return f(*args, **kwargs)
        except SystemExit:
            raise
        except BaseException as e:
            if INTERRUPTS or isinstance(e, (KeyboardInterrupt, _Terminated)):
                # whatever a recorded signal became on its way up (an ImportError, inside an import) it is the stop
                click.echo("interrupted", err=True)
                sys.stdout.flush()
                # at once: DuckDB's own threads may still be unwinding the interrupted query, and tearing the
                # interpreter down under them aborts the process (exit -6 instead of 130); nothing is left unwritten
                term = isinstance(e, _Terminated) or INTERRUPTS[:1] == [signal.SIGTERM]
                os._exit(143 if term else 130)
            debug = click.get_current_context().find_root().params.get("debug")
            if isinstance(e, EmbedsearchError) and not debug:
                click.echo(f"error: {e}", err=True)
                sys.exit(1)
            if isinstance(e, BrokenPipeError):  # `embedsearch sql ... --nl | head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(0)
            if isinstance(e, OSError) and not debug:  # a file we did not expect to fail (the library names its own)
                where = f"{e.filename}: " if getattr(e, "filename", None) else ""
                click.echo(f"error: {where}{e.strerror or e}", err=True)
                sys.exit(1)
            raise

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="embedsearch")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info logs on stderr.")
@click.pass_context
def cli(ctx, debug, quiet):
    """Embed image datasets with vision backbones once; search and evaluate them from a FAISS index + DuckDB catalog.

    \b
    Example:
        embedsearch index digits --backbone pixels:8 --name digits-pixels
        embedsearch info digits-pixels
    """
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("faiss.loader", "httpx", "huggingface_hub", "timm", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    ctx.obj = {"quiet": quiet}
    from embedsearch.core import progress

    progress.ENABLED = not quiet  # eval's per-step bars (rate, ETA) on stderr


def _progress() -> bool:
    return not click.get_current_context().find_root().obj.get("quiet", False)


@cli.command()
@click.argument("source")
@click.option("-n", "--name", help="Index name (default: derived from source and backbone).")
@root_option
@backbone_options()
@faiss_options
@run_options
@engine_options
@click.option("--dtype", type=click.Choice(DTYPES), help="Storage dtype of the vectors in Parquet.  [default: "
              f"{DTYPES[0]}]")
@click.option("--label-regex", help="Take labels from file names, e.g. '^(.*)_\\d+\\.jpg$' for Oxford Pets.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Root for a manifest's relative paths (default: "
              "the manifest's folder); absolute paths and file:// URIs are read as they are.")
@click.option("--split", "split_arg", help="Seeded stratified split for sources without one, e.g. test=0.1.")
@click.option("--min-per-class", type=int, default=0, help="Drop (and report) classes with fewer items.")
@click.option("--vectors", type=click.Path(dir_okay=False), help="Import precomputed vectors (.npy/.parquet/.json) "
              "instead of running a backbone.")
@click.option("--add", is_flag=True, help="Embed only the items a grown source gained.")
@seed_option(help="Seed for splits, random init, FAISS training.")
@output_options
@_handle_errors
def index(source, name, root, backbone, faiss, run, engine, dtype, label_regex, data_root, split_arg, min_per_class,
          vectors, add, seed, fmt):
    """Embed SOURCE with a backbone into Parquet parts, a FAISS index and a DuckDB catalog.

    SOURCE: digits | mnist:DIR | cifar10:DIR | cifar100:DIR | an image folder | a CSV/Parquet manifest |
    webdataset shards ('shards/{00000..00127}.tar' or a.tar,b.tar) | hf-dataset:DIR (a Hugging Face dataset:
    save_to_disk, the Hub's Parquet layout, the datasets cache, or OWNER/NAME in the hub cache).
    Re-running the same command after an interruption resumes from the committed parts.

    \b
    Example:
        embedsearch index digits --backbone pixels:8 --name digits-pixels
        embedsearch index ./pets --label-regex '^(.*)_\\d+\\.jpg$' --split test=0.1 \\
            --backbone timm:vit_small_patch14_dinov2.lvd142m --image-size 224
    """
    from dataclasses import replace

    from embedsearch.build import BuildConfig, build_index
    from embedsearch.sources.datasets import open_source

    if faiss.factory != "auto" and faiss.max_latency_ms:
        raise click.UsageError("--max-latency-ms applies to --index auto")
    if faiss.factory != "auto" and faiss.max_memory and not faiss.on_disk:
        raise click.UsageError("--max-memory applies to --index auto or --on-disk")
    if faiss.on_disk and "IVF" not in faiss.factory:
        raise click.UsageError(f"--on-disk needs an IVF index (e.g. --index IVF4096,Flat), not {faiss.factory!r}")

    src = open_source(source, root=data_root, label_regex=label_regex, split=split_arg, seed=seed,
                      min_per_class=min_per_class, require_paths=vectors is None)
    name = name or _default_name(source, "external" if vectors else backbone.spec)
    cfg = BuildConfig(name=name, backbone=replace(backbone, seed=seed), faiss=faiss, run=run, engine=engine,
                      seed=seed, add=add, vectors=vectors, root=root, **({"dtype": dtype} if dtype else {}))
    summary = _interruptible(lambda: build_index(src, cfg, progress=_progress()), name)
    if summary["failed"]:
        click.echo(_failure_report(summary, name), err=True)
    emit(summary, fmt)
    tried = summary["embedded_this_run"] + sum(summary["failures_this_run"].values())
    if summary["items"] and not summary["embedded"]:
        click.echo(f"error: nothing could be embedded: none of the {summary['items']} items of index {name} has a "
                   "vector (the reasons are above)", err=True)
        sys.exit(1)
    if tried and not summary["embedded_this_run"]:
        click.echo(f"error: none of the {tried} items this run tried could be embedded (the reasons are above)",
                   err=True)
        sys.exit(1)


def _failure_report(summary: dict, name: str) -> str:
    """The failed items grouped by reason (build.failure_groups): a count, the first message and three example
    paths each, then the query that lists them all."""
    groups = summary["failures"]
    lines = [f"{summary['failed']} of {summary['items']} items could not be embedded"
             + (f" ({len(groups)} reasons):" if len(groups) > 1 else ":")]
    width = max(len(str(g["count"])) for g in groups) if groups else 1

    def shown(text) -> str:  # one line each, whatever a path or message holds (a newline, a control character)
        text = str(text)
        return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")

    for g in groups:
        error = shown(" ".join(str(g["error"] or "").split()))
        lines.append(f"  {g['count']:>{width}}  {g['reason']}: {error[:200] + ('…' if len(error) > 200 else '')}")
        lines.append(f"  {'':>{width}}  e.g. {', '.join(map(shown, g['examples']))}")
    lines.append(f"all of them: embedsearch sql {name} \"SELECT path, stage, error FROM items WHERE status = "
                 "'failed'\"")
    return "\n".join(lines)


class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt: a BaseException, so the per-image `except Exception` that records a
    bad image cannot swallow it (it did: the run went on and exited 0)."""


def _interruptible(run, name: str, message=None):
    """SIGINT/SIGTERM stop the run between atomic writes: what was committed stays (`index`: the parts, and re-running
    the same command resumes; `eval`: each finished result), the step in progress is abandoned. Exit 130 (SIGINT) or
    143 (SIGTERM), as shells expect, after `message()` says what was kept."""
    from embedsearch.core.progress import INTERRUPTS as got  # recorded before anything can turn the exception

    # the handlers `main` installs, again: the Python API (click's test runner) reaches here without `main`
    previous = signal.signal(signal.SIGTERM, _on_signal)
    previous_int = signal.signal(signal.SIGINT, _on_signal)
    try:
        return run()
    except BaseException:
        # A signal may land inside an import: scipy's C extension turns the KeyboardInterrupt into "ImportError:
        # initialization failed" (exit 1 with a traceback, 1 run in ~6). Whatever was raised, a recorded signal
        # means this is the interruption.
        if not got:
            raise
        # a second signal while saying what was kept must not turn the clean exit into a traceback or a death by
        # signal (seen once in CI: exit -2 after the message)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        click.echo(message() if message else
                   f"interrupted: committed parts of {name} are kept; re-run the same command to resume", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # every write is atomic and already committed: exit at once, so nothing in interpreter shutdown can turn
        # the exit into death by signal (-2 in about 1 of 6 runs with sys.exit)
        os._exit(143 if got[0] == signal.SIGTERM else 130)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _default_name(source: str, backbone: str) -> str:
    import re
    from pathlib import Path

    s = Path(source.split(":")[-1]).stem if ":" in source else Path(source).stem or source
    b = backbone.split(":", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{s}-{b}").strip("-").lower()


@cli.command()
@click.argument("name")
@root_option
@output_options
@_handle_errors
def info(name, root, fmt):
    """Show an index's manifest summary and counts.

    \b
    Example:
        embedsearch info digits-pixels --json
    """
    from embedsearch.reader import Index

    emit(Index.open(name, root).info(), fmt)


@cli.command("index-quality")
@click.argument("name")
@root_option
@click.option("--queries", "n_queries", type=click.IntRange(1), default=1000, show_default=True,
              help="Items sampled as queries (each left out of its own results).")
@seed_option(1234, help="Sampling seed (auto tuning used the build seed + 1: a different sample).")
@option("k", "k_knn", type=click.IntRange(1), default=20, show_default=True, help="k of the kNN comparison.")
@selection_options("kNN bank (a --where predicate).", "kNN queries (a --where predicate).", dest=False)
@output_options
@_handle_errors
def index_quality(name, root, n_queries, seed, k_knn, train, test, fmt):
    """What the FAISS index costs against exact search: 1-recall@R and R-recall@R (R = 10, 20), mean and p99
    latency, bytes per vector, and, for a labelled index, weighted-kNN accuracy with the index vs exact search.

    \b
    Example:
        embedsearch index-quality cifar10-dinov2 --json
    """
    from embedsearch.evaluate.quality import quality
    from embedsearch.reader import Index

    q = quality(Index.open(name, root), n_queries=n_queries, seed=seed, k_knn=k_knn, train=train, test=test)
    if fmt != "table":
        return emit(q, fmt)
    how = f"{q['queries']['n']} queries, seed {seed}, own id left out; exact = streamed brute force"
    rows = [{"metric": "index", "value": f"{q['factory']} {q['params'] or ''}".strip(), "how": f"{q['n']} × {q['dim']}-d"}]
    rows += [{"metric": k, "value": v, "how": how} for k, v in q["recall"].items()]
    lat = q["latency_ms"]
    rows += [{"metric": "latency mean (ms)", "value": lat["mean"], "how": f"{lat['single_queries']} single queries"},
             {"metric": "latency p99 (ms)", "value": lat["p99"], "how": f"{lat['single_queries']} single queries"},
             {"metric": "batch queries/s", "value": lat["batch_qps"], "how": f"one batch of {lat['batch_queries']}"},
             {"metric": "bytes per vector", "value": q["bytes_per_vector"], "how": "FAISS file size / vectors"
              + (" (index.faiss + lists file)" if q.get("storage") else "")}]
    if q.get("drift"):
        dr = q["drift"]
        rows.append({"metric": "10-recall@10 drift", "value": dr["delta_10-recall@10"],
                     "how": f"{dr['recall_now']['10-recall@10']} now ({dr['vectors_now']} vectors) vs "
                            f"{dr['recall_at_training']['10-recall@10']} when trained ({dr['vectors_at_training']}); "
                            f"{dr['queries']} kept queries; --add --retrain resets"})
    if "knn" in q:
        kn = q["knn"]
        how = f"{kn['method']}; train {kn['n_train']} ({kn['train']}), test {kn['n_test']} ({kn['test']})"
        rows += [{"metric": "kNN top-1 exact (%)", "value": kn["top1_exact"], "how": how},
                 {"metric": "kNN top-1 with index (%)", "value": kn["top1_approximate"], "how": how},
                 {"metric": "kNN same prediction (%)", "value": kn["same_prediction_pct"], "how": "exact vs index"}]
    emit(rows, fmt)


@cli.command()
@click.argument("name")
@click.argument("query")
@root_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds of query work before it is stopped.")
@click.option("--memory-limit", type=Size(), default="4GB", show_default=True,
              help="DuckDB memory limit for this query.")
@output_options
@_handle_errors
def sql(name, query, root, timeout, memory_limit, fmt):
    """Run one read-only SELECT over an index's catalog and embeddings.

    Tables: items, classes, runs, results; `embeddings` (id, embedding) is a view over the Parquet parts.
    Rows stream out as they come with --nl and --csv; a repeated column name gets a suffix (id, id_2).

    \b
    Example:
        embedsearch sql digits-pixels "SELECT label, count(*) AS n FROM items GROUP BY label ORDER BY label"
    """
    from embedsearch.reader import Index

    ix = Index.open(name, root)
    ix.memory_limit = memory_limit
    cols, rows = ix.sql_stream(query, timeout_s=timeout)
    emit_rows((dict(zip(cols, r, strict=True)) for r in rows), fmt, columns=cols)


@cli.command()
@output_options
@_handle_errors
def backbones(fmt):
    """List the backbone kinds and their spec syntax.

    \b
    Example:
        embedsearch backbones --json
    """
    from embedsearch.models.backbones import list_backbones

    emit(list_backbones(), fmt)


@cli.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@backbone_options("spec", "weights", "pretrained", "image_size", "layer", "mean", "std", as_config=False,
                  required=("spec",), help={"spec": "The backbone spec.", "layer": "The layer whose feature map to "
                                            "show (default: a ViT's last block, a CNN's last map)."})
@option("out", required=True, type=click.Path(dir_okay=False), callback=output_file,
        help="OUT.html (self-contained); the PNGs are written beside it.")
@output_options
@_handle_errors
def inspect(image, spec, out, layer, weights, pretrained, image_size, mean, std, fmt):
    """What a backbone sees of one image: its input after preprocessing, the strongest channels of a layer, and for
    ViTs the class token's attention per head, as an HTML page with PNGs.

    \b
    Example:
        embedsearch inspect cat.jpg -b timm:vit_small_patch14_dinov2.lvd142m -o cat.html
    """
    from embedsearch.report.inspect import inspect_image

    emit(inspect_image(image, spec, out, weights=weights, pretrained=pretrained, image_size=image_size,
                       layer=layer, preprocess={"mean": mean, "std": std}), fmt)


@cli.command()
@click.argument("spec")
@backbone_options("weights", "pretrained", "image_size", "mean", "std", as_config=False)
@output_options
@_handle_errors
def layers(spec, weights, pretrained, image_size, mean, std, fmt):
    """List a backbone's submodules with their output shapes for one sample image: the names --layer takes.

    \b
    Example:
        embedsearch layers torchvision:resnet50 --random-init
        embedsearch index digits -b torchvision:resnet50 --random-init --layer layer3 --pool avg
    """
    from embedsearch.models.backbones import list_layers

    emit(list_layers(spec, weights=weights, pretrained=pretrained, image_size=image_size,
                     preprocess={"mean": mean, "std": std}), fmt)


@cli.command()
@click.argument("name")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              help="Query image(s), embedded with the index's own backbone and preprocessing.")
@click.option("--id", "ids", multiple=True, type=int, help="Query by item id (the item itself is not returned).")
@click.option("--text", "texts", multiple=True, help="Text query (open_clip indexes).")
@click.option("--vector", "vector_file", type=click.Path(dir_okay=False), help=".npy with one or many query vectors.")
@option("k", type=click.IntRange(1), default=10, show_default=True, help="Hits per query.")
@option("where", help="SQL predicate over catalog columns, e.g. \"split = 'train' AND label = 'cat'\".")
@html_option("Also write a contact sheet with thumbnails.")
@trust_code_option
@root_option
@output_options
@_handle_errors
def search(name, images, ids, texts, vector_file, k, where, html_file, trust_code, root, fmt):
    """Nearest neighbours (cosine) of images, ids, texts or vectors in an index.

    \b
    Example:
        embedsearch search digits-pixels --id 0 -k 5 --where "split = 'train'"
    """
    from embedsearch.query.search import iter_search, query_vectors
    from embedsearch.reader import Index

    ix = Index.open(name, root, trust_code=trust_code)
    descs, q = query_vectors(ix, images=images, ids=ids, texts=texts, vector_file=vector_file)
    rows = iter_search(ix, descs, q, k=k, where=where)  # --nl / --csv stream it, one batch of queries at a time
    if html_file:
        rows = list(rows)
    emit_rows(rows, fmt, columns=["query", "rank", "id", "score", "label", "split", "path"])
    if html_file:
        from pathlib import Path

        from embedsearch.report.html import contact_sheet, to_data_uri
        from embedsearch.sources.images import load_image

        queries = {str(f): to_data_uri(load_image(f)) for f in images}
        Path(html_file).write_text(contact_sheet(ix, rows, queries))
        click.echo(f"contact sheet: {html_file}", err=True)


@cli.command(name="eval")
@click.argument("name")
@selection_options("SQL predicate selecting the training items.", "SQL predicate selecting the test items.")
@option("methods", type=EVAL_METHODS, help="Comma-separated, spaces allowed (default: all that "
              "apply).")
@click.option("--prompts", type=click.Path(dir_okay=False), help="JSON of classnames/templates for zeroshot.")
@seed_option()
@click.option("--svc", "svc_policy", type=click.Choice(["auto", "exact", "nystroem"]), default="auto",
              show_default=True, help="RBF SVC: exact when its estimate fits 10 min (auto), always exact, or always "
              "the Nyström approximation (named so in the results).")
@click.option("--leak-threshold", type=click.FloatRange(-1, 1), help="Cosine at or above which a test item counts "
              "as a near-duplicate of a train item (default 0.95, as `leaks`); top-1 without them is reported too.")
@option("fresh", is_flag=True, help="Recompute every method, even those already committed for the same index "
        "snapshot, selections, seed and parameters (by default they are reused).")
@html_option("Where to write the HTML report (default: reports/eval-RUN.html in the index).")
@root_option
@output_options
@_handle_errors
def eval_cmd(name, train_where, test_where, methods, prompts, seed, svc_policy, leak_threshold, fresh, html_file,
             root, fmt):
    """Evaluate an index's embeddings: prototypes, kNN, probes, zero-shot, few-shot.

    Hyper-parameters are chosen on a seeded, stratified 10 % of the train selection and never on test. Each
    method's result is committed (JSON under reports/, a catalog row, its probe) as soon as it is done; re-running
    the same command after a stop reuses them and runs only the rest (--fresh recomputes). The plan with estimated
    times goes to stderr first; a Markdown summary with the time per method goes to stdout.

    \b
    Example:
        embedsearch eval digits-pixels --methods prototypes,knn,linear
    """
    import uuid

    from embedsearch.evaluate import EvalRun, run_and_commit
    from embedsearch.reader import Index
    from embedsearch.report.tables import write_eval_report

    ix = Index.open(name, root)
    run = EvalRun(uuid.uuid4().hex[:12], ix.name)

    def go():
        run_and_commit(ix, run=run, train=train_where, test=test_where, methods=methods, seed=seed,
                       prompts=prompts, svc=svc_policy, reuse=not fresh, leak_threshold=leak_threshold)
        return write_eval_report(ix, run, html_file)

    def kept() -> str:
        what = ", ".join(r.data["variant"] for r in run.results if r.data["run_id"] == run.run_id)
        return (f"interrupted: run {run.run_id} kept its finished results ({what or 'nothing had finished'}) in "
                f"{ix.layout.reports}; re-run the same command to reuse them and run the rest")

    md, html_path = _interruptible(go, name, kept)
    click.echo(f"results: {ix.layout.reports}/eval-{run.run_id}-*.json; report: {html_path}", err=True)
    for sk in run.skipped:
        click.echo(f"not run: {sk['variant'] or sk['method']}: {sk['reason']}", err=True)
    if fmt == "table":
        click.echo(md)
    else:
        emit(run.table(), fmt)


@cli.command()
@click.argument("names", nargs=-1, required=True)
@root_option
@output_options
@_handle_errors
def report(names, root, fmt):
    """Aggregate the latest evaluation results of one or more indexes into one table.

    \b
    Example:
        embedsearch report digits-pixels digits-vit --csv > results.csv
    """
    from embedsearch.reader import Index
    from embedsearch.report.tables import aggregate

    emit(aggregate([Index.open(n, root) for n in names]), fmt)


@cli.command()
@click.argument("names", nargs=-1, required=True)
@root_option
@click.option("--per-class", is_flag=True, help="Also print the per-class recall deltas.")
@output_options
@_handle_errors
def compare(names, root, per_class, fmt):
    """Compare indexes of the same items under different backbones (joined on id), method by method.

    Reports top-1 of each, error overlap (A wrong / B right, B wrong / A right, both wrong) and McNemar's exact test.

    \b
    Example:
        embedsearch compare digits-pixels digits-vit
    """
    from embedsearch.reader import Index
    from embedsearch.report.tables import compare as run_compare

    out = run_compare([Index.open(n, root) for n in names])
    if fmt != "table":
        emit(out["pairs"] if fmt in ("csv", "nl") else out, fmt)
        return
    rows = [{k: v for k, v in p.items() if k not in ("per_class", "run_ids")} for p in out["pairs"]]
    emit(rows, fmt)
    if per_class:
        for p in out["pairs"]:
            click.echo(f"\n{p['method']} / {p['variant']}: recall per class ({p['b']} − {p['a']})")
            emit(p["per_class"], fmt)


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="[NAME] IMAGE...")
@click.option("--probe", type=click.Choice(["prototypes", "linear", "svc", "mlp"]), default="linear", show_default=True,
              help="A probe saved by `embedsearch eval` (svc = the LinearSVC).")
@click.option("--head", is_flag=True, help="The backbone's own classifier (timm, torchvision, hf) instead of a probe.")
@backbone_options("spec", "weights", "pretrained", as_config=False, defaults=False, help={
    "spec": "With --head: a backbone spec instead of an index NAME (then every argument is an image).",
    "weights": "With --backbone: local weights.", "pretrained": "With --backbone: random weights (tests only)."})
@option("k", type=click.IntRange(1), default=3, show_default=True, help="Classes per image.")
@trust_code_option
@root_option
@output_options
@_handle_errors
def classify(args, probe, head, spec, weights, pretrained, k, trust_code, root, fmt):
    """Classify images from anywhere: with a probe trained by `embedsearch eval` on index NAME, or with --head the
    backbone's own classifier (its labels and probabilities: what the model itself says).

    \b
    Example:
        embedsearch classify pets-dinov2 --probe linear my_cat.jpg other_dataset/*.png
        embedsearch classify --head -b torchvision:resnet50 my_cat.jpg
    """
    if spec and not head:
        raise click.UsageError("--backbone applies with --head")
    if head:
        from embedsearch.models.heads import create_head, head_topk
        from embedsearch.models.runtime import resolve_device

        if spec:
            h = create_head(spec, weights=weights, pretrained=pretrained is not False, device=resolve_device("auto"))
            images = args
        else:
            from embedsearch.reader import Index

            if len(args) < 2:
                raise click.UsageError("give an index NAME and images, or --backbone SPEC and images")
            from embedsearch.models.backbones import no_fetch

            bc = Index.open(args[0], root).backbone_config
            with no_fetch():  # the index named this model, not the person: nothing is downloaded for it
                h = create_head(bc.spec, weights=bc.weights, pretrained=bc.pretrained,
                                device=resolve_device(bc.device))
            images = args[1:]
        emit(head_topk(h, images, k=k), fmt)
        return
    from embedsearch.evaluate.probes import classify as run_classify
    from embedsearch.reader import Index

    if len(args) < 2:
        raise click.UsageError("give an index NAME and at least one image")
    emit(run_classify(Index.open(args[0], root, trust_code=trust_code), probe, args[1:], k=k), fmt)


@cli.command()
@click.argument("source")
@option("method", type=click.Choice(["mae", "infonce", "mae+infonce", "video-mae", "supervised"]),
        default="mae+infonce", show_default=True)
@option("out", required=True, type=click.Path(dir_okay=False),
        help="Checkpoint path: writes OUT.safetensors, OUT.json, OUT.state.pt and OUT.loss.png.")
@option("where", default="split = 'train'", show_default=True,
        help="Which items to train on (SQL over id, label, split, path, metadata). Keep test out.")
@option("epochs", type=click.IntRange(min=1), default=60, show_default=True)
@option("batch_size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=Finite(min=0, min_open=True), default=1e-3, show_default=True)
@option("image_size", type=click.IntRange(min=0), default=0,
        help="Default: the data's size (8 digits, 28 MNIST, 32 CIFAR).")
@click.option("--patch-size", type=click.IntRange(min=0), default=0, help="Default: image size / 4.")
@click.option("--depth", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--width", type=click.IntRange(min=0), default=0, help="Default: 64 up to 16 px, else 128.")
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--mask-ratio", type=Finite(min=0, max=1, min_open=True, max_open=True), default=0.5, show_default=True)
@click.option("--decoder-depth", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--temperature", type=Finite(min=0, min_open=True), default=0.1, show_default=True, help="InfoNCE temperature.")
@click.option("--mae-weight", type=Finite(min=0), default=1.0, show_default=True)
@click.option("--infonce-weight", type=Finite(min=0), default=1.0, show_default=True)
@click.option("--augment", default="crop,affine", show_default=True, help="InfoNCE views: crop,affine,flip,color.")
@click.option("--frames", type=click.IntRange(min=1), default=3, show_default=True,
              help="--method video-mae: each image repeated as this many frames.")
@click.option("--tubelet", type=click.IntRange(min=1), default=1, show_default=True,
              help="--method video-mae: frames per token.")
@click.option("--arch", type=click.Choice(["cnn-small", "cnn-bn", "cnn-deep", "vit"]), default="cnn-deep",
              show_default=True, help="--method supervised: the network (the homework's CNNs, or the small ViT).")
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True,
              help="--method supervised: stop after this many epochs without a better held-out accuracy.")
@seed_option()
@option("device", default="auto", show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the last saved epoch of OUT.")
@output_options
@_handle_errors
def pretrain(source, method, out, where, epochs, batch_size, lr, image_size, patch_size, depth, width, heads,
             mask_ratio, decoder_depth, temperature, mae_weight, infonce_weight, augment, frames, tubelet, arch,
             patience, seed, device, resume, fmt):
    """Train a backbone on SOURCE's images: a small ViT self-supervised (MAE, InfoNCE, both, or the "video" MAE on
    images repeated as frames), or a supervised baseline on the labels (--method supervised --arch
    cnn-small|cnn-bn|cnn-deep|vit).

    The checkpoint is a backbone: `embedsearch index SOURCE --backbone ckpt:OUT`. Supervised training uses only
    the labelled --where selection; its epochs are chosen by early stopping on a seeded held-out 10 % of it (never
    on test), and the checkpoint keeps the best held-out epoch; `ckpt:` embeds its penultimate features.

    \b
    Example:
        embedsearch pretrain digits --method mae+infonce -o ckpts/digits-vit --epochs 60
        embedsearch index digits --backbone ckpt:ckpts/digits-vit --name digits-vit
        embedsearch pretrain cifar10:~/data --method supervised --arch cnn-deep --augment crop,flip -o ckpts/cifar-cnn
    """
    from embedsearch.sources.datasets import open_source
    from embedsearch.train.pretrain import PretrainConfig
    from embedsearch.train.pretrain import pretrain as run_pretrain

    if method == "supervised":
        from embedsearch.train.supervised import SupervisedConfig, train_supervised

        scfg = SupervisedConfig(arch=arch, epochs=epochs, patience=patience, batch_size=batch_size, lr=lr,
                                augment=tuple(a for a in augment.split(",") if a), image_size=image_size,
                                patch_size=patch_size, depth=depth, width=width, heads=heads, seed=seed,
                                where=where or None)
        res = train_supervised(open_source(source), scfg, out, resume=resume, device=device, progress=_progress())
        d = res.to_dict()
        d["final_loss"] = d["losses"][-1] if d["losses"] else None
        d["best_heldout_accuracy"] = max(d["heldout_accuracy"]) if d["heldout_accuracy"] else None
        d.pop("losses")
        d.pop("heldout_accuracy")
        emit(d, fmt)
        return

    cfg = PretrainConfig(method=method, image_size=image_size, patch_size=patch_size, depth=depth, width=width,
                         heads=heads, mask_ratio=mask_ratio, frames=frames, tubelet=tubelet,
                         decoder_depth=decoder_depth, temperature=temperature,
                         mae_weight=mae_weight, infonce_weight=infonce_weight,
                         augment=tuple(a for a in augment.split(",") if a), epochs=epochs, batch_size=batch_size,
                         lr=lr, seed=seed, where=where or None)
    res = run_pretrain(open_source(source), cfg, out, resume=resume, device=device, progress=_progress())
    d = res.to_dict()
    d["final_loss"] = d["losses"][-1] if d["losses"] else None
    d.pop("losses")
    emit(d, fmt)


@cli.command()
@root_option
@option("epochs", type=click.IntRange(min=1), default=40, show_default=True, help="Pretraining epochs for the ViT.")
@option("method", type=click.Choice(["mae", "infonce", "mae+infonce"]), default="infonce", show_default=True)
@_handle_errors
def quickstart(root, epochs, method):
    """The whole pipeline offline on the embedded digits: index with pixels and with a self-supervised ViT trained
    here on the train split, evaluate both, compare them, write the HTML report.

    \b
    Example:
        embedsearch quickstart
    """
    from embedsearch.cli.quickstart import run_quickstart

    run_quickstart(root, epochs=epochs, method=method, progress=_progress())


@cli.command()
@click.argument("name")
@click.option("--repair", is_flag=True, help="Re-embed damaged parts and rebuild the FAISS index and catalog.")
@trust_code_option
@root_option
@engine_options
@threads_option
@output_options
@_handle_errors
def verify(name, repair, trust_code, root, engine, threads, fmt):
    """Check an index's parts, FAISS file and catalog against its manifest; exit 1 if anything is wrong.

    \b
    Example:
        embedsearch verify digits-pixels || embedsearch verify digits-pixels --repair
    """
    from embedsearch.build.repair import repair as run_repair
    from embedsearch.build.repair import verify as run_verify

    if trust_code and not repair:
        raise click.UsageError("--trust-code applies with --repair (verify itself runs no backbone)")
    rep = (run_repair(name, root, progress=_progress(), engine=engine, threads=threads, trust_code=trust_code)
           if repair else run_verify(name, root))
    for w in rep.warnings:
        click.echo(f"warning: {w}", err=True)
    if fmt == "table":
        for r in rep.repaired:
            click.echo(f"repaired: {r}", err=True)
        click.echo(f"{rep.index}: {'sound' if rep.sound else 'NOT sound'} ({'; '.join(f'{k}: {v}' for k, v in rep.checked.items())})")
        if rep.problems:
            emit(rep.problems, fmt)
    else:
        emit(rep.to_dict(), fmt)
    if not rep.sound:
        sys.exit(1)


def _sheet(ix, html_file, title, how, rows) -> None:
    if html_file:
        from pathlib import Path

        from embedsearch.report.html import insight_sheet

        Path(html_file).write_text(insight_sheet(ix, title, how, rows))
        click.echo(f"contact sheet: {html_file}", err=True)


calibrate_option = click.option(
    "--calibrate/--no-calibrate", default=None,
    help="Let the space decide (the default without --threshold/--auto): calibrate it with synthetic copies of the "
         "items' own images against their nearest other items, and flag only if it can tell them apart (see the "
         "printed line). --no-calibrate: cosine ≥ 0.95.")
space_option = click.option(
    "--space", type=click.Choice(["index", "thumbs"]), default="index", show_default=True,
    help="Where similarity is judged: the index's own vectors, or `thumbs`, the built-in duplicate space (each "
         "image's 16×16 colour thumbnail, normalized cross-correlation).")


def _images(ix):
    """id, path → the item's RGB image or None: read as the contact sheets read them (only from folders this
    user indexed from), for calibration copies and the thumbs space."""
    from embedsearch.report.html import Thumbnails

    return Thumbnails(ix).image


def _decided(d: dict) -> None:
    click.echo(d["note"], err=True)


def _cap(*parts) -> tuple[str, ...]:
    """A card's caption lines; the sheet escapes each (report/html.py)."""
    return tuple(str(p) for p in parts if p is not None)


@cli.command()
@click.argument("name")
@option("where", help="Look for duplicates among these items only (default: all).")
@option("threshold", type=click.FloatRange(-1, 1), help="Cosine at or above which two items are duplicates "
        "(default: the calibrated space decides; see the printed line and similarity profile).")
@click.option("--auto", is_flag=True, help="Threshold at the widest gap of the nearest-neighbour similarity profile.")
@calibrate_option
@space_option
@seed_option()
@html_option("Also write a contact sheet of the groups.")
@root_option
@output_options
@_handle_errors
def duplicates(name, where, threshold, auto, calibrate, space, seed, html_file, root, fmt):
    """Near-duplicate items, grouped. By default the space is calibrated first (synthetic copies of the items'
    own images against their nearest other items) and decides only where it can tell them apart; --threshold or
    --auto decide by cosine instead (exact search).

    Stored in the catalog as insight_dup_group (smallest id of the group) and insight_dup_rank (0 for that item):
    search one item per group with --where "coalesce(insight_dup_rank, 0) = 0".

    \b
    Example:
        embedsearch duplicates digits-pixels --threshold 0.99 --html dups.html
    """
    from embedsearch.evaluate.insight import find_duplicates
    from embedsearch.reader import Index

    if sum((threshold is not None, auto, bool(calibrate))) > 1:
        raise click.UsageError("give one of --threshold, --auto and --calibrate")
    calibrate = calibrate if calibrate is not None else threshold is None and not auto
    ix = Index.open(name, root)
    d = find_duplicates(ix, where=where, threshold=threshold, auto=auto, space=space, seed=seed,
                        images=_images(ix), calibrate=calibrate)
    p = d["profile"]
    click.echo(f"nearest-neighbour similarity of {p['sampled']} sampled items (seed {p['seed']}):", err=True)
    for lo, hi, c in p["bins"]:
        click.echo(f"  [{lo:.3f}, {hi:.3f})  {c:>6}  {'#' * min(60, c * 60 // max(1, p['sampled']))}", err=True)
    _decided(d)
    click.echo(f"{len(d['pairs'])} pairs in {len(d['groups'])} groups among {d['n']} items", err=True)
    emit_rows(d["pairs"], fmt, columns=["a", "b", "score", "similarity", "group", "a_label", "b_label", "a_split",
                                        "b_split"])
    sims = {}
    for pr in d["pairs"]:
        sims[pr["b"]] = max(sims.get(pr["b"], -1), pr["score"])
        sims[pr["a"]] = max(sims.get(pr["a"], -1), pr["score"])
    _sheet(ix, html_file, f"{ix.name}: near-duplicates",
           f"Groups of near-duplicates among {d['n']} items ({d['where'] or 'all'}); {d['note']}; {d['how']}. "
           "Each card: id, label, split, its best score in the group.",
           [[(i, _cap(f"id {i}", lab, sp, f"{sims.get(i, 0):.4f}")) for i, lab, sp in
             zip(g["ids"], g["labels"], g["splits"], strict=True)] for g in d["groups"]])


@cli.command()
@click.argument("name")
@selection_options()
@option("threshold", type=click.FloatRange(-1, 1), help="Cosine at or above which a test item leaks "
        "(default: the calibrated space decides; see the printed line).")
@calibrate_option
@space_option
@seed_option()
@html_option("Also write the pairs side by side.")
@root_option
@output_options
@_handle_errors
def leaks(name, train_where, test_where, threshold, calibrate, space, seed, html_file, root, fmt):
    """Test items with a near-duplicate in train, each with its best train candidate. By default the space is
    calibrated on the train items first and decides only where it can tell copies from neighbours; --threshold
    decides by cosine instead (exact search). `eval` reports accuracy without leaks only after such a decision.

    Stored as insight_leak_of / insight_leak_sim on the test items: `eval --test "split = 'test' AND insight_leak_of IS NULL"` evaluates
    without them (eval also reports top-1 without leaks next to every accuracy).

    \b
    Example:
        embedsearch leaks digits-pixels --html leaks.html
    """
    from embedsearch.evaluate.insight import find_leaks
    from embedsearch.reader import Index

    ix = Index.open(name, root)
    if threshold is not None and calibrate:
        raise click.UsageError("give --threshold or --calibrate, not both")
    calibrate = calibrate if calibrate is not None else threshold is None
    d = find_leaks(ix, train=train_where, test=test_where, threshold=threshold, space=space, seed=seed,
                   images=_images(ix), calibrate=calibrate)
    _decided(d)
    click.echo(f"{d['n_leaks']} of {d['n_test']} test items ({100 * d['fraction']:.2f} %) flagged"
               if d["decided"] else "no leaks flagged: undecided", err=True)
    emit_rows(d["leaks"], fmt, columns=["test_id", "train_id", "score", "similarity", "test_label", "train_label",
                                        "test_path", "train_path"])
    _sheet(ix, html_file, f"{ix.name}: train/test leaks",
           f"Test items ({test_where}) with a near-duplicate in train ({train_where}); {d['note']}; {d['how']}.",
           [[(r["test_id"], _cap(f"test {r['test_id']}", r["test_label"])),
             (r["train_id"], _cap(f"train {r['train_id']}", r["train_label"], f"{r['similarity']:.4f}"))]
            for r in d["leaks"]])


@cli.command("label-issues")
@click.argument("name")
@option("where", help="Labelled items to score (default: every labelled item).")
@option("methods", type=Names(lambda: ("knn", "linear")), default="knn,linear", show_default=True,
        help="Out-of-fold models: knn, linear or both.")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@seed_option()
@top_option
@html_option("Also write a contact sheet of the top rows.")
@root_option
@output_options
@_handle_errors
def label_issues(name, where, methods, folds, seed, top, html_file, root, fmt):
    """Likely label errors: items whose out-of-fold predictions disagree with their label, most likely first, and
    how many labels are probably wrong.

    Each item is scored by models that never saw its label (seeded stratified folds): score = 1 − p(given label).
    The decision (confident learning): per class, a threshold = the mean p(class) over the items labelled with it;
    the items counted by (given label, most probable class reaching its threshold), calibrated to the class counts,
    estimate how many labels of each class are wrong; that many of each class's least self-confident items that
    the models give to another class are flagged. Stored as insight_label_issue, insight_suggested_label and
    insight_label_flagged for every scored item; a class with fewer items than --folds is warned about.

    \b
    Example:
        embedsearch label-issues digits-pixels -n 20 --html issues.html
    """
    from embedsearch.evaluate.label_issues import find_label_issues
    from embedsearch.reader import Index

    ix = Index.open(name, root)
    d = find_label_issues(ix, where=where, methods=methods, n_folds=folds, seed=seed)
    click.echo(f"scored {d['n']} labelled items out-of-fold ({', '.join(d['methods'])}; {d['folds']} stratified "
               f"folds, seed {d['seed']}); {d['score']}", err=True)
    click.echo(f"estimated {d['estimated_wrong']} wrong labels ({100 * d['estimated_rate']:.2f} %: the calibrated "
               f"confident joint's off-diagonal mass); flagged {d['flagged']} (per class, that many of its least "
               "self-confident items predicted as another class; stored as insight_label_flagged)", err=True)
    rows = d["issues"][:top]
    emit_rows(rows, fmt, columns=["rank", "id", "label", "suggested", "score", "p_label", "p_suggested", "flagged",
                                  "split", "path"])
    _sheet(ix, html_file, f"{ix.name}: likely label errors",
           f"The {len(rows)} highest-scoring of {d['n']} labelled items; {d['score']}; models: {d['methods']}, "
           f"{d['folds']} folds, seed {d['seed']}.",
           [[(r["id"], _cap(f"#{r['rank']} id {r['id']}", f"given {r['label']}", f"suggested {r['suggested']}",
                            f"score {r['score']:.3f}"))] for r in rows])


@cli.command()
@click.argument("name")
@option("where", help="Items to rank (default: all); neighbours are searched among them.")
@option("k", type=click.IntRange(1), default=10, show_default=True, help="Which neighbour's distance.")
@top_option
@html_option("Also write a contact sheet of the top rows.")
@root_option
@output_options
@_handle_errors
def outliers(name, where, k, top, html_file, root, fmt):
    """Items far from everything: ranked by 1 − cosine to their k-th nearest neighbour. Stored as insight_outlier.

    \b
    Example:
        embedsearch outliers digits-pixels -n 20 --html outliers.html
    """
    from embedsearch.evaluate.insight import find_outliers
    from embedsearch.reader import Index

    ix = Index.open(name, root)
    d = find_outliers(ix, where=where, k=k)
    rows = d["outliers"][:top]
    emit_rows(rows, fmt, columns=["rank", "id", "score", "label", "split", "path"])
    _sheet(ix, html_file, f"{ix.name}: outliers", f"The {len(rows)} most isolated of {d['n']} items; {d['how']}, "
           f"k = {d['k']}.", [[(r["id"], _cap(f"#{r['rank']} id {r['id']}", r["label"], f"{r['score']:.4f}"))]
                              for r in rows])


@cli.command(name="map")
@click.argument("name")
@option("method", type=click.Choice(["umap", "pca", "tsne"]), default="umap", show_default=True)
@click.option("--color", "color", type=click.Choice(["label", "split", "prediction", "leak", "label-issue",
                                                     "outlier"]), default="label", show_default=True)
@option("where", help="Items to map (default: all).")
@click.option("--sample", type=click.IntRange(3), default=20_000, show_default=True,
              help="Items the projection is fitted on (seeded); the rest are transformed.")
@seed_option()
@option("fresh", is_flag=True, help="Recompute the projection even if one is stored for this setting.")
@html_option("Where to write the page (default: reports/map-METHOD-COLOR.html in the index).", "-o")
@root_option
@_handle_errors
def map_cmd(name, method, color, where, sample, seed, fresh, html_file, root):
    """A 2-D map of the embeddings: stored with the index, drawn as a self-contained interactive page.

    Hover a point for its thumbnail and metadata, click it for its nearest neighbours. The projection is reused
    while the index snapshot, selection, method, sample and seed are unchanged.

    \b
    Example:
        embedsearch map digits-pixels --method umap --color label
    """
    from pathlib import Path

    from embedsearch.core.files import atomic_write_bytes
    from embedsearch.reader import Index
    from embedsearch.report.map import map_page, projection

    ix = Index.open(name, root)
    proj = projection(ix, where=where, method=method, sample=sample, seed=seed, reuse=not fresh)
    if proj["reused_from"]:
        click.echo(f"map: reused the projection of run {proj['reused_from']}", err=True)
    page = map_page(ix, proj, color=color, seed=seed)
    if html_file:
        out = Path(html_file)
    else:
        ix.layout.reports.mkdir(exist_ok=True)
        out = ix.layout.reports / f"map-{method}-{color}.html"
    atomic_write_bytes(out, page.encode())
    click.echo(f"map: {out}", err=True)


def _trust_served_code(registry) -> None:
    """`serve --trust-code`: the code each index served now names is checked (it must hash as recorded) and trusted
    on this machine, so uploads may run it; an index whose code changed is refused at start-up."""
    from embedsearch.models.code import CODE_KINDS, check_reattach
    from embedsearch.models.config import BackboneConfig
    from embedsearch.models.specs import parse_backbone
    from embedsearch.reader import Index

    for name in registry.names():
        ix = Index.open(registry.root / name)
        if ix.manifest.space.kind in ("external", "module"):
            continue
        spec = BackboneConfig.of_manifest(ix.manifest).spec
        if parse_backbone(spec).kind in CODE_KINDS:
            check_reattach(spec, ix.manifest.backbone, name, trust=True)
            click.echo(f"embedsearch serve: {name}: trusting {spec} (its recorded code hash matches)", err=True)
        ix.close()


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--token", envvar="EMBEDSEARCH_TOKEN",
              help="Bearer token every request but /v1/health must carry (also $EMBEDSEARCH_TOKEN); printable ASCII.")
@click.option("--cors", "cors", metavar="ORIGIN", help="Allow cross-origin requests from this one origin.")
@click.option("--image-root", "image_roots", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="A folder whose images may be served (repeatable), besides those you indexed from on this "
              "machine; an index's own idea of where its images are is never enough.")
@click.option("--originals", is_flag=True, help="Also serve original images (by item id; thumbnails always).")
@click.option("--max-upload", type=Bytes(), default="16MB", show_default=True, help="Largest request body.")
@click.option("--max-pixels", type=click.IntRange(1), default=40_000_000, show_default=True,
              help="Largest uploaded image, in pixels (checked from its header before decoding).")
@option("trust_code", is_flag=True,
              help="Let image uploads run the py:/hub: code of the indexes served now (after you have read it); "
              "recorded on this machine. The code must still hash as each index recorded it.")
@root_option
@_handle_errors
def serve(names, host, port, token, cors, image_roots, originals, max_upload, max_pixels, trust_code, root):
    """An HTTP API (/v1/…, OpenAPI page at /docs) and a web page for searching and browsing indexes.

    NAMES: the indexes to serve (default: every index under the root). The server answers from each index's last
    complete snapshot while `index --add` or `verify --repair` runs, and switches when the new one is committed.
    Images are read only from folders you indexed from on this machine or name with --image-root. Needs
    `pip install "embedsearch[serve]"`.

    \b
    Example:
        embedsearch serve digits-pixels --port 8000
        curl 'http://127.0.0.1:8000/v1/indexes/digits-pixels/search?id=0&k=5'
    """
    import re
    from pathlib import Path

    from embedsearch.core.errors import SpecError
    from embedsearch.store.manifest import default_root

    if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token):
        # it travels in a header and a cookie: refused here, not a 500 on every request later
        raise click.BadParameter("use printable ASCII characters only, no spaces", param_hint="--token")

    try:
        from embedsearch.serve.runner import serve as run_server
        from embedsearch.serve.settings import Limits
        from embedsearch.serve.snapshots import Registry
    except ImportError as e:
        raise SpecError(f"`embedsearch serve` needs {e.name}: pip install \"embedsearch[serve]\"") from None
    registry = Registry(Path(root) if root else default_root(), list(names), image_roots=image_roots)
    if trust_code:
        _trust_served_code(registry)
    limits = Limits(max_upload_bytes=max_upload, max_pixels=max_pixels)
    run_server(registry, host=host, port=port, token=token, cors=cors, originals=originals, limits=limits)


def _on_signal(signum, frame):
    """SIGINT/SIGTERM: recorded (core.progress.INTERRUPTS), then raised as KeyboardInterrupt / _Terminated."""
    from embedsearch.core.progress import INTERRUPTS

    INTERRUPTS.append(signum)
    raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _record_signals() -> None:
    """From the first line on, SIGINT/SIGTERM are recorded as well as raised, so one that lands in the first
    seconds, inside an import that swallows it, still stops the run at its next step."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def main() -> None:
    _record_signals()
    from embedsearch.core.openmp import short_openmp_waits

    short_openmp_waits()  # before anything loads torch
    cli(prog_name="embedsearch")


if __name__ == "__main__":
    main()
