"""Self-contained HTML: the evaluation report (SVG charts, misclassified examples) and the search contact sheet."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)


# An index is data someone may hand you: every label, path, caption, class and index name it holds reaches our
# pages through one of these two, never as markup or script (a label `</script><script>…` ran in the map page).
def esc(value) -> str:
    """Any value as HTML text or as a quoted attribute value: `<`, `>`, `&`, `"` and `'` become entities."""
    return html.escape(str(value), quote=True)


# `<`, `>` and `&` never appear in a script block, so `</script>`, `<!--` and `]]>` inside a string cannot end it or
# change how it parses; U+2028/U+2029 end a line in older JavaScript. All are \uXXXX escapes, which JSON and
# JavaScript read back as the same characters.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                              "\u2029": "\\u2029"})


def script_json(value) -> str:
    """`value` as JSON to place inside a <script> element: a JavaScript expression equal to it, holding no `<`, `>`
    or `&` (ASCII only, so a lone surrogate is an escape too and the page always encodes as UTF-8)."""
    return json.dumps(value, ensure_ascii=True).translate(_SCRIPT_SAFE)


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{font-size:22px}h2{font-size:18px;
margin-top:32px}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.grid{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #ddd;padding:4px;width:120px;
font-size:12px}.card img{width:112px;height:112px;object-fit:contain;image-rendering:pixelated;background:#eee}
.row{display:flex;gap:6px;align-items:flex-start;margin:6px 0;border-bottom:1px solid #eee;padding-bottom:6px}
.bad{color:#b00}.ok{color:#070}.muted{color:#777}"""

# Sets <body data-images="ok N"> once every image decoded, or "broken N": read by tests through headless Chromium.
_CHECK = """<script>window.addEventListener('load',()=>{const im=[...document.images];
const bad=im.filter(i=>!(i.complete&&i.naturalWidth>0));
document.body.dataset.images=(bad.length?'broken ':'ok ')+im.length;});</script>"""


def page(title: str, body: str) -> str:
    """A self-contained page; `body` is markup built by this package with every value passed through esc()."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{body}{_CHECK}</body></html>")


# --------------------------------------------------------------------------------------------- thumbnails


class Thumbnails:
    """Item id → small PNG data URI, from the source files (folders, manifests) or the built-in arrays.

    An index is data someone may hand you, and its manifest names the folder its images live in: that folder is read
    only when it lies within a root this user chose — one they indexed from on this machine (core/trust.py) or one
    given here (`serve --image-root`) — and an item's path only when it stays inside that folder. Otherwise an index
    whose manifest says `root: /` and whose catalog names `etc/…` would have any readable image sent out."""

    ARRAY_KINDS = ("mnist", "cifar10", "cifar100")  # their records hold the pixels, read from the spec's DIR

    def __init__(self, ix, size: int = 112, image_roots=()):
        from embedsearch.core.trust import trusted_roots

        self.ix, self.size = ix, size
        self.source = ix.manifest.source or {}
        self.root = str(self.source["root"]) if self.source.get("root") else None
        self.roots = [*map(str, image_roots), *trusted_roots()]
        self._reopen: str | None = None  # the source spec whose records hold the pixels (set by _refusal)
        self.refused_folder: str | None = None  # the folder at fault when refused
        self.refused = self._refusal()  # why this index's images are not read (one line), or None
        self._told = False

    def _refusal(self) -> str | None:
        import os

        from embedsearch.core.trust import within

        spec, root = str(self.source.get("spec") or ""), self.root
        folders = [root] if root else []
        # the spec _records() may reopen: the built-in digits, or mnist:DIR / cifar10:DIR, whose files (pickles,
        # idx arrays) are read from DIR. Parsed here without parse_source, which expands `{0..N}` shard patterns.
        kind, _, rest = spec.partition(":")
        if spec == "digits":
            self._reopen = spec
        elif kind in self.ARRAY_KINDS and rest and "{" not in rest:
            self._reopen = spec
            # the folder the reader reads, as it picks it (and indexing recorded it as the source root)
            sub = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}.get(kind)
            folders.append(os.path.join(rest, sub) if sub and os.path.isdir(os.path.join(rest, sub)) else rest)
        for f in folders:
            if not within(f, self.roots):
                self.refused_folder = f
                return (f"its images are in {f}, not in a folder you indexed from on this machine or gave with "
                        "--image-root")
        return None

    @lru_cache(maxsize=1)  # noqa: B019 — one Thumbnails object per report
    def _records(self):
        from embedsearch.sources.datasets import open_source

        # only sources whose records carry the pixels (their DIR was checked by _refusal): reopening a folder or a
        # manifest here would walk whatever folder the manifest names, for nothing (their items have paths)
        if self.refused or self._reopen is None:
            return {}
        try:
            return {r.id: r for r in open_source(self._reopen).records}
        except Exception as e:  # noqa: BLE001 — a report without thumbnails beats no report
            log.warning("no thumbnails: cannot reopen source %s (%s)", self.source.get("spec"), e)
            return {}

    def image(self, item_id: int, path: str | None = None, strict: bool = False):
        """The item's image (RGB PIL), read through the dataset root and format allowlist as indexing reads it;
        None when it cannot be read (moved, deleted, unreadable) or may not be (see the class). `strict`: raise
        UntrustedError with the reason instead of returning None for the latter."""
        from pathlib import Path

        from embedsearch.core.errors import UntrustedError
        from embedsearch.core.trust import within
        from embedsearch.sources.images import ImageLoadError, array_to_image, load_image

        try:
            if self.refused:
                raise UntrustedError(f"index {self.ix.name}: images not served: {self.refused}")
            root = self.root
            if path and root:
                p = Path(root) / str(path)
                if not within(p, [root]):  # `..` or an absolute path in the catalog
                    raise UntrustedError(f"item {item_id}: its path {path!r} leaves the image folder {root}")
                return load_image(p, Path(root))
            rec = self._records().get(int(item_id))
            return None if rec is None or rec.array is None else array_to_image(rec.array)
        except (ImageLoadError, ValueError):  # ValueError: a NUL byte in the path
            return None
        except UntrustedError as e:
            if strict:
                raise
            if not self._told:  # once per page, not once per card
                self._told = True
                log.warning("no thumbnail: %s", e)
            return None

    def for_id(self, item_id: int, path: str | None = None) -> str | None:
        img = self.image(item_id, path)
        return None if img is None else to_data_uri(img, self.size)


def thumbnail(img, size: int = 112):
    """A copy at most size×size; tiny images (8×8 digits) are scaled up by a whole factor, crisp."""
    img = img.copy()
    if max(img.size) < size:
        from PIL import Image

        f = max(1, size // max(img.size))
        img = img.resize((img.size[0] * f, img.size[1] * f), Image.NEAREST)
    img.thumbnail((size, size))
    return img


def to_png(img, size: int = 112) -> bytes:
    buf = io.BytesIO()
    thumbnail(img, size).save(buf, format="PNG")
    return buf.getvalue()


def to_data_uri(img, size: int = 112) -> str:
    return "data:image/png;base64," + base64.b64encode(to_png(img, size)).decode()


def _img(uri: str | None, alt: str) -> str:
    # only our own inline images: a src is never a URL that would make the page fetch something
    if uri and str(uri).startswith("data:image/"):
        return f"<img src='{esc(uri)}' alt='{esc(alt)}'>"
    return f"<div class='muted'>[no image: {esc(alt)}]</div>"


# --------------------------------------------------------------------------------------------- SVG charts


def svg_lines(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, log_x: bool = False,
              w: int = 520, h: int = 260) -> str:
    """A small line chart; y is accuracy in [0, 1]."""
    pad = 40
    xs = [x for pts in series.values() for x, _ in pts]
    tx = (lambda x: np.log2(x)) if log_x else (lambda x: x)
    x0, x1 = tx(min(xs)), tx(max(xs))
    span = (x1 - x0) or 1
    X = lambda x: pad + (tx(x) - x0) / span * (w - 2 * pad)  # noqa: E731
    Y = lambda y: h - pad - y * (h - 2 * pad)  # noqa: E731
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    parts = [f"<svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>",
             f"<text x='{w / 2}' y='16' text-anchor='middle' font-size='13'>{esc(title)}</text>",
             f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' stroke='#999'/>",
             f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{h - pad}' stroke='#999'/>",
             f"<text x='{w / 2}' y='{h - 8}' text-anchor='middle' font-size='11'>{esc(xlabel)}</text>"]
    for v in (0, 0.5, 1):
        parts.append(f"<text x='{pad - 4}' y='{Y(v) + 4}' text-anchor='end' font-size='10'>{v:.1f}</text>")
    for x in sorted(set(xs)):
        parts.append(f"<text x='{X(x)}' y='{h - pad + 14}' text-anchor='middle' font-size='10'>{x:g}</text>")
    for i, (name, pts) in enumerate(series.items()):
        c = colors[i % len(colors)]
        path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
        parts.append(f"<polyline fill='none' stroke='{c}' stroke-width='2' points='{path}'/>")
        parts += [f"<circle cx='{X(x):.1f}' cy='{Y(y):.1f}' r='3' fill='{c}'/>" for x, y in pts]
        parts.append(f"<text x='{w - pad}' y='{pad + 14 * i}' text-anchor='end' font-size='11' fill='{c}'>"
                     f"{esc(name)}</text>")
    return "".join(parts) + "</svg>"


def svg_bars(labels: list[str], values: list[float], title: str, w: int = 640) -> str:
    """Horizontal bars in [0, 1] (per-class recall)."""
    bh, left = 16, 140
    h = 30 + bh * len(labels)
    parts = [f"<svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>",
             f"<text x='{w / 2}' y='14' text-anchor='middle' font-size='13'>{esc(title)}</text>"]
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = 24 + i * bh
        parts.append(f"<text x='{left - 4}' y='{y + 11}' text-anchor='end' font-size='10'>{esc(lab[:22])}</text>")
        parts.append(f"<rect x='{left}' y='{y}' width='{max(0.0, v) * (w - left - 50):.1f}' height='{bh - 3}' fill='#4c78a8'/>")
        parts.append(f"<text x='{left + max(0.0, v) * (w - left - 50) + 4:.1f}' y='{y + 11}' font-size='10'>{100 * v:.1f}</text>")
    return "".join(parts) + "</svg>"


def svg_confusion(matrix: list[list[int]], labels: list[str], title: str, cell: int | None = None) -> str:
    n = len(labels)
    cell = cell or max(6, min(28, 560 // max(n, 1)))
    left, top = 110, 40
    w, h = left + n * cell + 10, top + n * cell + 30
    m = np.asarray(matrix, float)
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    parts = [f"<svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>",
             f"<text x='{w / 2}' y='14' text-anchor='middle' font-size='13'>{esc(title)}</text>",
             f"<text x='{left + n * cell / 2}' y='30' text-anchor='middle' font-size='10'>predicted →</text>"]
    for i in range(n):
        if cell >= 10:
            parts.append(f"<text x='{left - 4}' y='{top + i * cell + cell * 0.7}' text-anchor='end' font-size='10'>"
                         f"{esc(labels[i][:16])}</text>")
        for j in range(n):
            v = rows[i, j]
            shade = int(255 - 200 * v)
            parts.append(f"<rect x='{left + j * cell}' y='{top + i * cell}' width='{cell}' height='{cell}' "
                         f"fill='rgb({shade},{shade},255)'><title>true {esc(labels[i])}, predicted "
                         f"{esc(labels[j])}: {int(m[i, j])}</title></rect>")
            if cell >= 22 and m[i, j]:
                parts.append(f"<text x='{left + j * cell + cell / 2}' y='{top + i * cell + cell * 0.65}' "
                             f"text-anchor='middle' font-size='9'>{int(m[i, j])}</text>")
    return "".join(parts) + "</svg>"


# --------------------------------------------------------------------------------------------- pages


def markdown_to_html(md: str) -> str:
    """Just enough Markdown for our own summaries: headings, bullet lists, pipe tables, paragraphs."""
    out, table, items = [], [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-", " "}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            out.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cells[0]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
                       + "</table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:].replace("`", ""))
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{esc(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{esc(line.replace('`', ''))}</p>")
    flush()
    return "".join(out)


def eval_report(ix, run, markdown: str, n_errors: int = 24, n_neighbours: int = 5) -> str:
    """The HTML report of one eval run: summary table, per-method charts, misclassified items with neighbours."""

    thumbs = Thumbnails(ix)
    body = [markdown_to_html(markdown)]
    scored = [r.data for r in run.results if r.data.get("metrics")]
    for d in scored:
        body.append(f"<h2>{esc(d['method'])}: {esc(d['variant'])}</h2>")
        body.append(_confusion_html(d))
        pc = d["per_class"]
        if len(pc) > BARS_MAX:  # a person reads the worst classes, not 20,000 bars
            pc = sorted(pc, key=lambda p: (p["recall"], p["class"]))[:BARS_MAX]
            title = f"per-class recall (%): the {BARS_MAX} lowest of {len(d['per_class'])} classes"
        else:
            title = "per-class recall (%)"
        body.append(svg_bars([p["class"] for p in pc], [p["recall"] for p in pc], title))
        m = d["metrics"]
        ks = [k for k in (1, 3, 5) if f"top{k}" in m]
        body.append(svg_lines({"top-k": [(k, m[f"top{k}"]) for k in ks]}, "top-k accuracy", "k"))
        if d["method"] == "knn" and d["params"].get("vote") != "majority":
            body.append(svg_lines({"weighted": [(int(k), v) for k, v in d["params"]["k_sweep_top1"].items()],
                                   "majority": [(int(k), v) for k, v in d["params"]["k_sweep_majority_top1"].items()]},
                                  "kNN top-1 vs k", "k", log_x=True))
    for r in run.results:
        if r.method == "fewshot":
            curve = r.data["curve"]
            last = max(c["shots"] for c in curve if c["shots"] != "all") * 2 if len(curve) > 1 else 1
            xs = [c["shots"] if c["shots"] != "all" else last for c in curve]
            body.append("<h2>few-shot curve</h2>")
            body.append(svg_lines({"prototypes": list(zip(xs, [c["prototypes_mean"] for c in curve])),
                                   "kNN k=20": list(zip(xs, [c["knn_mean"] for c in curve]))},
                                  "top-1 vs train items per class (last point: all)", "shots / class", log_x=True))
    if scored:
        d = next((x for x in scored if x["method"] == "knn"), scored[0])
        body.append(_misclassified(ix, d, thumbs, n_errors, n_neighbours))
    return page(f"{ix.name}: evaluation {run.run_id}", "".join(body))


BARS_MAX = 60  # per-class recall bars drawn; beyond, the lowest


def _confusion_html(d: dict) -> str:
    """The matrix when the result holds one (few classes); else the most frequent confusions as a table."""
    conf, classes = d["confusion"], d["classes"]
    if "matrix" in conf:
        return svg_confusion(conf["matrix"], [classes[c] for c in conf["labels"]], "confusion matrix (row-normalized)")
    rows = "".join(f"<tr><td>{esc(classes[t])}</td><td>{esc(classes[q])}</td><td>{esc(n)}</td></tr>"
                   for t, q, n in conf["top_confusions"])
    return (f"<p>{esc(conf['note'])}; the most frequent confusions:</p>"
            f"<table><tr><th>true</th><th>predicted</th><th>items</th></tr>{rows}</table>")


def _misclassified(ix, d, thumbs, n_errors, n_neighbours) -> str:
    from embedsearch.query.exact import knn_neighbours

    pr = d["predictions"]
    wrong = [(i, t, p) for i, t, p in zip(pr["id"], pr["true"], pr["pred"]) if t != p][:n_errors]
    out = [f"<h2>misclassified by {esc(d['method'])} ({esc(d['variant'])}): first {len(wrong)} "
           f"and their {n_neighbours} nearest train items</h2>"]
    if not wrong:
        return out[0] + "<p>none</p>"
    tr = ix.select(d["train"]["where"])
    bank = ix.vectors(tr["id"])
    ids = np.asarray([w[0] for w in wrong])
    sims, idx = knn_neighbours(bank, ix.vectors(ids), n_neighbours, tr["id"], ids)
    meta = ix.items_by_id(list(ids) + list(tr["id"][idx.ravel()]), "id, path, label")
    classes = d["classes"]
    for row, (i, t, p) in enumerate(wrong):
        cards = [f"<div class='card'>{_img(thumbs.for_id(i, meta[i]['path']), str(i))}<br>id {esc(i)}<br>"
                 f"true <b>{esc(classes[t])}</b><br><span class='bad'>pred {esc(classes[p])}</span></div>"]
        for s, j in zip(sims[row], tr["id"][idx[row]]):
            m = meta[int(j)]
            cls = "ok" if m["label"] == classes[t] else "bad"
            cards.append(f"<div class='card'>{_img(thumbs.for_id(j, m['path']), str(j))}<br>"
                         f"<span class='{cls}'>{esc(str(m['label']))}</span> {s:.3f}</div>")
        out.append("<div class='row'>" + "".join(cards) + "</div>")
    return "".join(out)


def contact_sheet(ix, rows: list[dict], query_images: dict[str, str] | None = None) -> str:
    """Search results as a grid: each query, then its hits with thumbnail, label and score."""
    thumbs = Thumbnails(ix)
    query_images = query_images or {}
    body, current = [], None
    for r in rows:
        if r["query"] != current:
            if current is not None:
                body.append("</div>")
            current = r["query"]
            q = r["query"]
            uri = query_images.get(q)
            if uri is None and q.startswith("id:"):
                uri = thumbs.for_id(int(q[3:]), ix.items_by_id([int(q[3:])], "id, path").get(int(q[3:]), {}).get("path"))
            body.append(f"<h2>{esc(q)}</h2><div class='row'>")
            if uri:
                body.append(f"<div class='card'>{_img(uri, q)}<br><b>query</b></div>")
        body.append(f"<div class='card'>{_img(thumbs.for_id(r['id'], r.get('path')), str(r['id']))}<br>"
                    f"#{esc(r['rank'])} id {esc(r['id'])}<br>{esc(r.get('label'))} · {r['score']:.3f}</div>")
    if current is not None:
        body.append("</div>")
    return page(f"{ix.name}: search", "".join(body))


def _caption(cap) -> str:
    """A card's caption as markup: its lines (a list or tuple of values) each escaped, one per line. A string is
    read as the lines the CLI's `_cap` writes — escaped values joined by `<br>` — and each line is unescaped and
    escaped again, so that whatever a caller passes, the only markup a caption adds is our own `<br>`."""
    if isinstance(cap, str):
        lines = [html.unescape(x) for x in cap.split("<br>")]
    else:
        lines = [x for x in cap if x is not None]
    return "<br>".join(esc(x) for x in lines)


def insight_sheet(ix, title: str, how: str, rows: list[list[tuple[int, object]]], limit: int = 200) -> str:
    """A contact sheet of item rows (duplicate groups, leak pairs, label issues, outliers): each row a list of
    (item id, caption) cards with thumbnails, a caption being its lines (plain values; see _caption); `how` says
    how the rows were found (method, threshold, seed)."""
    thumbs = Thumbnails(ix)
    shown = rows[:limit]
    ids = sorted({i for r in shown for i, _ in r})
    meta = ix.items_by_id(ids, "id, path")
    body = [f"<p>{esc(how)}</p>",
            f"<p class='muted'>{len(rows)} rows{f', the first {limit} shown' if len(rows) > limit else ''}.</p>"]
    for r in shown:
        cards = [f"<div class='card'>{_img(thumbs.for_id(i, meta.get(i, {}).get('path')), str(i))}<br>"
                 f"{_caption(cap)}</div>" for i, cap in r]
        body.append("<div class='row'>" + "".join(cards) + "</div>")
    return page(title, "".join(body))
