"""`embedsearch map`: a 2-D projection of an index's vectors, stored with the index, and an interactive HTML page.

The projection is fitted on a seeded sample (all items when there are fewer) of the L2-normalized vectors and
applied to the rest: PCA and UMAP transform new points themselves; t-SNE cannot, so the items outside its sample are
placed at the similarity-weighted mean of their 10 nearest sampled items (said so on the page). It is stored as
catalog columns `insight_map_METHOD_x`, `insight_map_METHOD_y`, and reused while the index snapshot, selection, method, sample and
seed are the same. The page is drawn with plotly (plotly.js inlined: one self-contained file): zoom and pan, hover
shows the item's thumbnail and metadata, click lists its nearest neighbours.

UMAP and t-SNE need at least MIN_DISTINCT distinct vectors to fit on (UMAP's spectral layout fails on 3 items, and
t-SNE's PCA start divides by zero on identical ones, which crashed the process): below that the map is drawn with
PCA, which is exact there (three points lie in a plane), and the page and stderr say so. t-SNE is fitted on the
distinct vectors only; items sharing a vector are drawn at one point.

Everything an index holds (labels, splits, the index name) reaches the page as data: JSON escaped for a script
block, text set with textContent, names escaped for plotly's own markup — never as HTML or code.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging

import numpy as np

from embedsearch.core.errors import EvalError
from embedsearch.core.vectors import l2_normalize
from embedsearch.report.html import esc, script_json

log = logging.getLogger(__name__)

METHODS = ("umap", "pca", "tsne")
COLORS = ("label", "split", "prediction", "leak", "label-issue", "outlier")
SAMPLE = 20_000  # items the projection is fitted on
THUMBS = 3000  # items whose thumbnails are embedded in the page (a seeded sample of the rest shows metadata only)
NEIGHBOURS = 8
MIN_DISTINCT = 4  # distinct vectors UMAP and t-SNE fit on; with fewer, PCA (exact for ≤ 3 points)
NAMES = {"umap": "UMAP", "pca": "PCA", "tsne": "t-SNE"}


def _plotly_text(value) -> str:
    """A value as plotly text (legend entries, titles): plotly reads `<b>`, `<a href>`, `<br>` and entities in them;
    escaped, it shows `<`, `>` and `&` as themselves (it decodes &lt; &gt; &amp; and nothing else we write)."""
    return html.escape(str(value), quote=False)


def _key(ix, ids: np.ndarray, method: str, sample: int, seed: int) -> str:
    h = hashlib.sha256(json.dumps({"parts": [p.sha256 for p in ix.manifest.parts], "method": method,
                                   "sample": sample, "seed": seed}).encode())
    h.update(np.ascontiguousarray(ids, np.int64).tobytes())
    return h.hexdigest()[:24]


def _fit(x: np.ndarray, method: str, sample: int, seed: int) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    fit_on = np.sort(rng.choice(len(x), sample, replace=False)) if len(x) > sample else np.arange(len(x))
    xs = x[fit_on]
    info = {"method": method, "fitted_on": len(fit_on), "seed": seed, "n": len(x)}
    if method != "pca":
        distinct = len(np.unique(xs, axis=0))
        if distinct < MIN_DISTINCT:
            note = (f"PCA instead of {NAMES[method]}: the {len(xs)} items it would be fitted on hold {distinct} "
                    f"distinct vector{'s' if distinct != 1 else ''}, and {NAMES[method]} needs at least "
                    f"{MIN_DISTINCT} (PCA is exact for up to 3)")
            log.warning("map: %s", note)
            out, pca = _fit(x, "pca", sample, seed)
            return out, {**pca, "method": method, "drawn_with": "pca", "how": f"{note}; {pca['how']}"}
    if method == "pca":
        mu = xs.mean(axis=0)
        _, _, vt = np.linalg.svd(xs - mu, full_matrices=False)
        return (x - mu) @ vt[:2].T, {**info, "how": "PCA of the normalized vectors (top 2 components)"}
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise EvalError('--method umap needs umap-learn: pip install "embedsearch[insight]" (or use --method '
                            "pca / tsne)") from None
        reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed, n_jobs=1).fit(xs)
        out = np.empty((len(x), 2), np.float64)
        out[fit_on] = reducer.embedding_
        rest = np.setdiff1d(np.arange(len(x)), fit_on)
        if len(rest):
            out[rest] = reducer.transform(x[rest])
        return out, {**info, "how": "UMAP (n_neighbors 15, min_dist 0.1, euclidean on normalized vectors = cosine "
                                    "order) fitted on the sample, the rest transformed"}
    from sklearn.manifold import TSNE

    # fitted on the distinct vectors, in the order they first occur: identical ones would share a point anyway,
    # and all-identical input made the PCA start 0/0 and the Barnes-Hut tree crash on NaN (rc 139)
    _, first, inverse = np.unique(xs, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique row u ↦ its first occurrence, in sample order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    xu = xs[first[order]]
    perplexity = float(min(30, max(2, (len(xu) - 1) / 3)))
    emb = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(xu)[rank[inverse.reshape(-1)]]
    repeated = len(xs) - len(xu)
    dedup = (f"; {repeated:,} of the {len(xs):,} fitted items repeat another's vector exactly and are drawn at its "
             "point" if repeated else "")
    if repeated:
        log.info("map: t-SNE fitted on %d distinct vectors (%d items repeat one)", len(xu), repeated)
    out = np.empty((len(x), 2), np.float64)
    out[fit_on] = emb
    rest = np.setdiff1d(np.arange(len(x)), fit_on)
    if len(rest):
        from embedsearch.query.exact import Bank, topk

        s, i = topk(Bank(xs), x[rest], 10, desc="map: placing the rest")
        w = np.exp((s - s[:, :1]) / 0.05)
        out[rest] = (w[..., None] * emb[i]).sum(1) / w.sum(1, keepdims=True)
    return out, {**info, "how": f"t-SNE (perplexity {perplexity:g}, PCA init) of the sample; other items at the "
                                f"similarity-weighted mean of their 10 nearest sampled items{dedup}"}


def projection(ix, where: str | None = None, method: str = "umap", sample: int = SAMPLE, seed: int = 0,
               reuse: bool = True) -> dict:
    """2-D coordinates for the items of `where`: {"ids", "xy", "info", "reused_from"}; computed once per setting
    and stored in the catalog."""
    if method not in METHODS:
        raise EvalError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    sel = ix.select(where)
    ids = sel["id"]
    if len(ids) < 3:
        raise EvalError(f"map: `{where or 'all items'}` selects {len(ids)} items; it needs at least 3")
    from embedsearch.evaluate.computed import column

    key = _key(ix, ids, method, sample, seed)
    # stored under computed.column's prefix: a source column `map_pca_x` is the user's, never read or replaced
    cx, cy = column(f"map_{method}_x"), column(f"map_{method}_y")
    if reuse:
        _, runs = ix.sql("SELECT run_id, config FROM runs WHERE kind = 'insight:map' "
                         "AND json_extract_string(config, '$.key') = ? ORDER BY started DESC LIMIT 1", [key])
        cols = [r[0] for r in ix.con.execute("DESCRIBE items").fetchall()]
        if runs and cx in cols:
            got = ix.items_by_id(ids, f"id, {cx}, {cy}")
            xy = np.asarray([[got[int(i)][cx], got[int(i)][cy]] for i in ids], np.float64)
            if np.isfinite(xy).all():
                info = json.loads(runs[0][1])
                log.info("map: reused the %s projection of run %s (same snapshot, selection, sample, seed)",
                         method, runs[0][0])
                return {"ids": ids, "xy": xy, "info": info, "reused_from": runs[0][0]}
    x = l2_normalize(ix.vectors(ids))
    xy, info = _fit(x, method, sample, seed)
    if not np.isfinite(xy).all():
        raise EvalError(f"map --method {method}: the projection of `{where or 'all items'}` has non-finite "
                        "coordinates; try --method pca")
    info = {**info, "where": where, "key": key}
    from embedsearch.evaluate.computed import store_columns

    run_id = store_columns(ix, "map", ids,
                           {cx: ("DOUBLE", xy[:, 0].tolist()), cy: ("DOUBLE", xy[:, 1].tolist())}, info)
    return {"ids": ids, "xy": xy, "info": info, "reused_from": None, "run_id": run_id}


def _colour_values(ix, ids: np.ndarray, color: str) -> tuple[list, str]:
    """Per item: a category (or a number for label-issue / outlier) and what the colour means."""
    from embedsearch.evaluate.computed import column

    cols = [r[0] for r in ix.con.execute("DESCRIBE items").fetchall()]
    need = {"leak": (column("leak_of"), "embedsearch leaks"),
            "label-issue": (column("label_issue"), "embedsearch label-issues"),
            "outlier": (column("outlier"), "embedsearch outliers")}
    if color in need and need[color][0] not in cols:
        raise EvalError(f"--color {color}: the catalog has no {need[color][0]} column yet; run "
                        f"`{need[color][1]} {ix.name}` first")
    if color == "prediction":
        from embedsearch.evaluate.results import ResultStore

        pred = {}
        for r in ResultStore(ix).latest():
            if r.get("predictions") and r["method"] in ("knn", "linear", "prototypes"):
                p = r["predictions"]
                pred = {i: r["classes"][c] for i, c in zip(p["id"], p["pred"], strict=True)}
                how = f"{r['method']} ({r['variant']}) prediction, run {r['run_id']}; items outside its test: —"
                break
        if not pred:
            raise EvalError(f"--color prediction: index {ix.name} has no stored kNN, linear or prototype result; "
                            f"run `embedsearch eval {ix.name}` first")
        return [pred.get(int(i), "—") for i in ids], how
    col = {"label": "label", "split": "split", "leak": column("leak_of"), "label-issue": column("label_issue"),
           "outlier": column("outlier")}[color]
    got = ix.items_by_id(ids, f"id, {col}")
    vals = [got[int(i)][col] for i in ids]
    if color == "leak":
        sim = column("leak_sim")
        split = ix.items_by_id(ids, f"id, {sim}")
        return (["leak" if v is not None else "no leak" if split[int(i)][sim] is None else "—"
                 for i, v in zip(ids, vals, strict=True)],
                "test items with a near-duplicate in train (from `embedsearch leaks`)")
    if color in ("label-issue", "outlier"):
        return [float("nan") if v is None else float(v) for v in vals], f"{col} score (higher: more suspect)"
    return ["—" if v is None else str(v) for v in vals], col


def map_page(ix, proj: dict, color: str = "label", seed: int = 0) -> str:
    """The self-contained page: one scatter of the projection coloured by `color`."""
    import plotly.graph_objects as go

    from embedsearch.query.exact import Bank, topk
    from embedsearch.report.html import Thumbnails, to_data_uri

    if color not in COLORS:
        raise EvalError(f"--color {color!r}: use one of {', '.join(COLORS)}")
    ids, xy = proj["ids"], proj["xy"]
    values, meaning = _colour_values(ix, ids, color)
    meta = ix.items_by_id(ids, "id, label, split, path")
    rng = np.random.default_rng(seed)
    with_thumb = set(ids[rng.choice(len(ids), THUMBS, replace=False)].tolist() if len(ids) > THUMBS else ids.tolist())
    x = l2_normalize(ix.vectors(ids))
    s, nb = topk(Bank(x), x, min(NEIGHBOURS + 1, len(ids)), desc="map: neighbours")
    thumbs = Thumbnails(ix, size=64)
    images = {}
    for i in sorted(with_thumb):
        img = thumbs.image(i, meta[i]["path"])
        if img is not None:
            images[str(i)] = to_data_uri(img, 64)
    items = {str(int(i)): {"label": meta[int(i)]["label"], "split": meta[int(i)]["split"], "value": str(v),
                           "nb": [[str(int(ids[j])), round(float(sim), 4)] for j, sim in zip(nb[p], s[p],
                                                                                             strict=True)
                                  if j != p][:NEIGHBOURS]}
             for p, (i, v) in enumerate(zip(ids, values, strict=True))}
    fig = go.Figure()
    kind = go.Scattergl if len(ids) > 5000 else go.Scatter  # SVG points up to 5,000 (hoverable elements)
    numeric = color in ("label-issue", "outlier")
    if numeric:
        fig.add_trace(kind(x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=[str(int(i)) for i in ids],
                           marker={"size": 6, "color": values, "colorscale": "Viridis", "showscale": True},
                           hoverinfo="none", name=color))
    else:
        for cat in sorted(set(values), key=str):
            m = np.asarray([v == cat for v in values])
            fig.add_trace(kind(x=xy[m, 0], y=xy[m, 1], mode="markers", name=_plotly_text(cat),
                               customdata=[str(int(i)) for i in ids[m]], marker={"size": 6}, hoverinfo="none"))
    info = proj["info"]
    drawn = f" (drawn with {NAMES[info['drawn_with']]})" if info.get("drawn_with") else ""
    fig.update_layout(title=_plotly_text(f"{ix.name}: {NAMES.get(info['method'], info['method'])} map{drawn} of "
                                         f"{len(ids):,} items, coloured by {color}"),
                      width=1000, height=720, hovermode="closest", dragmode="zoom", template="plotly_white")
    plot = fig.to_html(full_html=False, include_plotlyjs=True, div_id="map")
    how = (f"{info['how']}; fitted on {info['fitted_on']:,} of {info['n']:,} items (seed {info['seed']}); "
           f"colour: {meaning}. Thumbnails are embedded for {len(images):,} items.")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(ix.name)} map</title>
<link rel="icon" href="data:,"><style>body{{font:14px system-ui,sans-serif;margin:16px}}
#panel{{position:fixed;right:16px;top:16px;width:300px;background:#fff;border:1px solid #ccc;padding:8px;
font-size:12px;max-height:90vh;overflow:auto}}#panel div{{display:inline-block;width:88px;vertical-align:top;margin:2px}}
#panel img{{width:64px;height:64px;image-rendering:pixelated}}.muted{{color:#777}}
</style></head><body><p class="muted" id="how">{esc(how)}</p>{plot}
<div id="panel" data-state="empty">Hover a point for the item; click it for its nearest neighbours.</div>
<script>
// Labels, splits and values are data: set as text, never parsed as HTML (a label may read `<img onerror=…>`).
const ITEMS = {script_json(items)};
const IMAGES = {script_json(images)};
const panel = document.getElementById("panel");
const own = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
function el(tag, text) {{
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  return e;
}}
function card(id, extra) {{
  const it = own(ITEMS, id) ? ITEMS[id] : {{}};
  const d = el("div");
  if (own(IMAGES, id) && String(IMAGES[id]).startsWith("data:image/")) {{
    const img = el("img");
    img.src = IMAGES[id];
    img.alt = id;
    d.append(img);
  }}
  d.append(el("br"), `id ${{id}} · ${{it.label ?? "—"}} · ${{it.split ?? "—"}}${{extra || ""}}`);
  return d;
}}
function hover(id) {{
  panel.replaceChildren(card(id, ` · ${{own(ITEMS, id) ? ITEMS[id].value : "—"}}`));
  panel.dataset.state = "hover " + id;
}}
function neighbours(id) {{
  const nb = own(ITEMS, id) ? ITEMS[id].nb : [];
  panel.replaceChildren(card(id), el("b", "nearest neighbours"), ...nb.map(([j, s]) => card(j, ` · ${{s}}`)));
  panel.dataset.state = "neighbours " + id;
}}
const plot = document.getElementById("map");
plot.on("plotly_hover", (ev) => hover(String(ev.points[0].customdata)));
plot.on("plotly_click", (ev) => neighbours(String(ev.points[0].customdata)));
</script></body></html>"""
