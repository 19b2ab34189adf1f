"""`embedsearch quickstart`: index digits with pixels and with a self-supervised ViT, evaluate, compare, report.
The cli command imports this module when it runs (so `embedsearch --help` does not load the pipeline)."""

from __future__ import annotations

from pathlib import Path

import click

from embedsearch.build import BuildConfig, build_index
from embedsearch.core.output import table
from embedsearch.evaluate.runner import run_and_commit
from embedsearch.reader import Index
from embedsearch.report.tables import compare, write_eval_report
from embedsearch.sources.datasets import open_source
from embedsearch.store.manifest import default_root
from embedsearch.train.pretrain import PretrainConfig, pretrain

METHODS = ["prototypes", "knn", "linear", "fewshot"]


def run_quickstart(root: str | None, *, epochs: int = 40, method: str = "infonce", progress: bool = True) -> dict:
    """The whole job on digits, echoing as it goes (the command's own output: it is the CLI's library half)."""
    base = Path(root) if root else default_root()
    src = open_source("digits")
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    say("1/5 index digits with the raw-pixel baseline (pixels:8)")
    build_index(src, BuildConfig.of(name="quickstart-pixels", backbone="pixels:8", root=str(base), num_workers=0),
                progress=progress)
    ckpt = base / "quickstart-ckpt" / f"digits-{method.replace('+', '-')}"
    say(f"2/5 pretrain a ViT with {method} on the train split only ({epochs} epochs) → {ckpt}.safetensors")
    pretrain(src, PretrainConfig(method=method, epochs=epochs), ckpt, device="cpu", progress=progress)
    say("3/5 index digits with that checkpoint")
    build_index(src, BuildConfig.of(name="quickstart-vit", backbone=f"ckpt:{ckpt}", root=str(base), num_workers=0,
                                 device="cpu", precision="fp32"), progress=progress)
    out = {}
    for name in ("quickstart-pixels", "quickstart-vit"):
        say(f"4/5 evaluate {name}: {', '.join(METHODS)}")
        ix = Index.open(name, base)
        run = run_and_commit(ix, methods=METHODS)
        md, html_path = write_eval_report(ix, run)
        click.echo(md)
        out[name] = {"report": str(html_path), "run_id": run.run_id}
    say("5/5 compare")
    cmp = compare([Index.open("quickstart-pixels", base), Index.open("quickstart-vit", base)])
    rows = [{k: v for k, v in p.items() if k in ("method", "variant", "top1_a", "top1_b", "delta", "a_wrong_b_right",
                                                 "b_wrong_a_right", "both_wrong", "mcnemar_p")} for p in cmp["pairs"]]
    click.echo("## quickstart-pixels (a) vs quickstart-vit (b), same 450 test digits\n")
    click.echo(table(rows))
    click.echo(f"\nindexes: {base}/quickstart-pixels, {base}/quickstart-vit; checkpoint: {ckpt}.safetensors "
               f"(loss curve {ckpt}.loss.png)")
    for name, o in out.items():
        click.echo(f"HTML report for {name}: {o['report']}")
    return {"compare": cmp, "reports": out, "checkpoint": str(ckpt)}
