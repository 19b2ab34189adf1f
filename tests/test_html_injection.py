"""Issue #28 F2 and F11: nothing an index holds reaches a browser as code, and `map` never crashes.

F2: hostile strings — the classic breakouts and a seeded fuzz of their fragments — are put in every place an index
holds text that reaches a page (labels, file paths, an extra manifest column, the index name, a query image's file
name); every HTML output the package writes (eval report, search contact sheet, the four insight sheets, the map
page with its hover panel, the inspect page, the `serve` page) is generated from that one index and loaded in
headless Chromium with a watcher on dialogs, console errors and requests: none may fire, and the strings must be
shown literally. The two escaping helpers are checked on their own with hypothesis.

F11: `map --method tsne` on identical vectors segfaulted (rc 139) and `--method umap` on 3 items was a scipy
traceback: through the real CLI, both now draw a PCA map (exact there) and say so on stderr and on the page.
"""

import csv
import html
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import CHROMIUM, chromium_page
from tests.test_serve import Server

# --------------------------------------------------------------------------------------------- the helpers

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                     max_leaves=20)
_hostile_text = st.text(alphabet=st.sampled_from(list("<>&'\"/!-[]\u2028\u2029 ascript=")) | st.characters(),
                        max_size=60)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_script_json_reads_back_equal_and_holds_nothing_that_ends_a_script(value):
    from embedsearch.report.html import script_json

    out = script_json(value)
    assert json.loads(out) == value
    assert not set(out) & set("<>&\u2028\u2029") and out.isascii()


@settings(max_examples=300, deadline=None)
@given(_hostile_text)
def test_esc_reads_back_equal_and_holds_no_markup(text):
    from embedsearch.report.html import esc

    out = esc(text)
    assert html.unescape(out) == text
    assert not set(out) & set("<>\"'")


def test_insight_sheet_escapes_its_captions_and_inlines_only_data_images(tmp_path):
    """A caption given as its lines (plain values) is escaped; one in the CLI's form (escaped values joined by
    `<br>`) is shown as those values, once escaped; a thumbnail that is not a data: image is never a src."""
    from embedsearch.report import html as H

    evil = "</div><script>alert(1)</script>"
    assert H._caption(("id 3", evil, None)) == "id 3<br>" + html.escape(evil)
    cli_form = "<br>".join(html.escape(x) for x in ("id 3", evil, "a &amp; b"))
    assert H._caption(cli_form) == "<br>".join(html.escape(x) for x in ("id 3", evil, "a &amp; b"))
    assert H._caption(evil) == html.escape(evil)  # a raw string is text too: never markup
    assert "src" not in H._img("https://example.invalid/x.png", "x") and "<img" in H._img("data:image/png;base64,AA",
                                                                                           "x")


# --------------------------------------------------------------------------------------------- F2: every page

CURATED = ["</script><script>alert(1)</script>", '"><img src=x onerror=alert(2)>', "'-alert(3)-'",
           "x\u2028alert(4)\u2029y", "<!--", "]]>", "javascript:alert(5)", "<svg onload=alert(6)>",
           "${alert(7)}`", "<b>bold</b> &amp; &lt;i&gt;"]
FRAGMENTS = ["</script>", "<script>", "alert(8)", "<img src=x onerror=alert(9)>", "'", '"', "`", "<!--", "-->",
             "]]>", "&", "&amp;", "\u2028", "\u2029", "</title>", "</textarea>", "<a href=javascript:alert(10)>",
             "{{", "}}", "\\", " ", "é", "漢"]


def _fuzzed(n: int, seed: int = 28) -> list[str]:
    """n strings of 2–6 hostile fragments with text between: seeded, so one index holds them all."""
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) + rng.choice(["", "x", "1", " "]) for _ in range(rng.randint(2, 6)))
            for _ in range(n)]


LABELS = list(dict.fromkeys(s.strip() for s in CURATED + _fuzzed(4)))  # ≤ 14 classes: eval draws their matrix
NAME = "ix'\"><img src=x onerror=alert(11)>"  # an index name is its folder's name
QUERY = "q'\"><img src=x onerror=alert(12)>.png"
COLOURS = [(230, 30, 30), (30, 200, 40), (30, 40, 220), (230, 230, 30), (230, 30, 230), (30, 220, 220),
           (250, 250, 250), (120, 60, 10), (10, 90, 120), (140, 140, 140), (200, 120, 160), (60, 20, 90),
           (100, 200, 120), (20, 20, 20)]
assert len(LABELS) <= len(COLOURS)


def _invoke(*args) -> str:
    from embedsearch.cli import cli

    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One index (pixels:8, from a CSV manifest) whose labels, paths and `caption` column are hostile, with a test
    copy of one train image per class (so every class shows in the duplicate and leak sheets), and every HTML
    page written from it. Returns where they are and what each should show."""
    base = tmp_path_factory.mktemp("hostile")
    mp = pytest.MonkeyPatch()
    mp.setenv("EMBEDSEARCH_TRUST_FILE", str(base / "trust.json"))  # the user's own config stays untouched
    mp.setenv("HF_HUB_OFFLINE", "1")
    images, root, pages = base / "images", base / "indexes", base / "pages"
    images.mkdir()
    pages.mkdir()
    rng = np.random.default_rng(0)
    rows, k = [], 0
    for c, label in enumerate(LABELS):
        for split, n in (("train", 4), ("test", 2)):
            for _ in range(n):
                name = f"{k}{'<img src=x onerror=alert(13)>' if k % 2 else CURATED[k % 3]}.png".replace("/", "_")
                a = np.clip(np.array(COLOURS[c])[None, None] + rng.normal(0, 20, (16, 16, 3)), 0, 255)
                Image.fromarray(a.astype(np.uint8)).save(images / name)
                rows.append([name, label, split, LABELS[(c + 1) % len(LABELS)]])
                k += 1
        copy = f"{k}copy'\"><svg onload=alert(14)>.png"
        (images / copy).write_bytes((images / rows[-6][0]).read_bytes())  # the class's first train image
        rows.append([copy, label, "test", CURATED[0]])
        k += 1
    with open(base / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split", "caption"], *rows])
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(base / QUERY)

    _invoke("index", base / "m.csv", "--data-root", images, "-b", "pixels:8", "--name", NAME, "--root", root)
    from embedsearch.reader import Index

    ix = Index.open(NAME, root)
    meta = ix.items_by_id(ix.select()["id"], "id, label, path, caption")
    ix.close()
    n = len(meta)
    shows = {}  # page → strings it must show literally
    _invoke("eval", NAME, "-m", "prototypes,knn", "--html", pages / "eval.html", "--root", root)
    shows["eval.html"] = set(LABELS)
    first = min(meta)
    hits = json.loads(_invoke("search", NAME, "--id", first, "--image", base / QUERY, "-k", n, "--json",
                              "--html", pages / "search.html", "--root", root))
    shows["search.html"] = {h["label"] for h in hits} | {str(base / QUERY)}
    assert {h["label"] for h in hits} == set(LABELS)
    got = json.loads(_invoke("duplicates", NAME, "--json", "--html", pages / "duplicates.html", "--root", root,
                             "--threshold", "0.95"))
    shows["duplicates.html"] = {r[f"{s}_label"] for r in got for s in "ab"}
    got = json.loads(_invoke("leaks", NAME, "--json", "--html", pages / "leaks.html", "--root", root,
                             "--threshold", "0.95"))
    shows["leaks.html"] = {r[f"{s}_label"] for r in got for s in ("test", "train")}
    got = json.loads(_invoke("label-issues", NAME, "--methods", "knn", "--folds", "2", "-n", n, "--json", "--html",
                             pages / "label-issues.html", "--root", root))
    shows["label-issues.html"] = {r["label"] for r in got} | {r["suggested"] for r in got}
    got = json.loads(_invoke("outliers", NAME, "-n", n, "--json", "--html", pages / "outliers.html", "--root",
                             root))
    shows["outliers.html"] = {r["label"] for r in got}
    assert all(len(v) >= 3 for v in shows.values()), {p: len(v) for p, v in shows.items()}
    _invoke("map", NAME, "--method", "pca", "--color", "label", "-o", pages / "map.html", "--root", root)
    shows["map.html"] = set(LABELS)
    inspected = base / f"inspect{QUERY}"
    inspected.write_bytes((base / QUERY).read_bytes())
    _invoke("inspect", inspected, "-b", "timm:test_vit", "--random-init", "-o", pages / "inspect.html")
    for page in shows:  # their titles name the index
        shows[page].add(NAME)
    shows["inspect.html"] = {f"inspect: {inspected.name}"}
    yield {"base": base, "root": root, "pages": pages, "shows": shows, "meta": meta}
    mp.undo()


class Watch:
    """Everything a page does that it must not: dialogs (alert, confirm, prompt), console errors and uncaught
    exceptions, requests other than `allowed(url)`."""

    def __init__(self, page, errors):
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.errors = errors
        self.allowed = lambda url: False
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: None if r.url.startswith(("data:", "about:")) or self.allowed(r.url)
                else self.requests.append(r.url))

    def check(self, page, what: str):
        assert self.dialogs == [], f"{what}: a dialog opened: {self.dialogs}"
        assert self.requests == [], f"{what}: unexpected requests: {self.requests}"
        assert self.errors == [], f"{what}: console errors: {self.errors}"
        # no element carries an event-handler attribute, and no script came from the data
        handlers = page.evaluate("[...document.querySelectorAll('*')].flatMap(e => [...e.attributes]"
                                 ".filter(a => a.name.startsWith('on')).map(a => e.tagName + ' ' + a.name))")
        assert handlers == [], f"{what}: event handlers in the DOM: {handlers}"


def _text(page) -> str:
    return page.evaluate("document.documentElement.textContent")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_hostile_strings_in_an_index_never_run_in_any_page_and_are_shown_literally(hostile):
    pages, shows, meta = hostile["pages"], hostile["shows"], hostile["meta"]
    with chromium_page((1400, 900)) as (page, errors):
        watch = Watch(page, errors)
        for name, want in shows.items():
            url = (pages / name).as_uri()
            watch.allowed = lambda u, url=url: u == url
            page.goto(url)
            if name == "map.html":
                page.wait_for_selector(".scatterlayer .point", timeout=30_000)
            else:
                page.wait_for_function("document.body.dataset.images !== undefined", timeout=30_000)
            watch.check(page, name)
            text = _text(page)
            missing = [s for s in want if s not in text]
            assert not missing, f"{name}: not shown literally: {missing}"

        # the map: hover a real point with the mouse, then every item's hover and neighbour panel
        watch.allowed = lambda u: u == (pages / "map.html").as_uri()
        page.goto((pages / "map.html").as_uri())
        page.wait_for_selector(".scatterlayer .point", timeout=30_000)
        box = page.locator(".scatterlayer .point").nth(3).bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # plotly's drag layer is on top
        page.wait_for_function("document.getElementById('panel').dataset.state.startsWith('hover')")
        shown = page.evaluate("document.getElementById('panel').dataset.state").split()[1]
        assert str(meta[int(shown)]["label"]) in page.locator("#panel").text_content()
        assert page.evaluate("document.querySelector('#panel img').naturalWidth") > 0  # its thumbnail, drawn
        panels = page.evaluate("Object.keys(ITEMS).map(id => { hover(id); const h = panel.textContent; "
                               "neighbours(id); return [id, h, panel.textContent]; })")
        assert len(panels) == len(meta)
        for i, hovered, nbs in panels:
            assert meta[int(i)]["label"] in hovered and meta[int(i)]["label"] in nbs
        legend = page.locator(".legend").text_content()
        assert all(lab.replace("\u2028", "").replace("\u2029", "") in legend.replace("\u2028", "").replace(
            "\u2029", "") for lab in LABELS), legend
        watch.check(page, "map hover")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_the_serve_page_shows_hostile_labels_paths_and_names_as_text(hostile):
    import httpx

    env = {**os.environ, "EMBEDSEARCH_TRUST_FILE": str(hostile["base"] / "trust.json"), "HF_HUB_OFFLINE": "1"}
    srv = Server("--root", str(hostile["root"]), "--image-root", str(hostile["base"] / "images"), env=env)
    try:
        items = httpx.get(f"{srv.url}/v1/indexes/{quote(NAME, safe='')}/items", params={"limit": 24}).json()["items"]
        item = items[1]
        with chromium_page((1100, 800)) as (page, errors):
            watch = Watch(page, errors)
            # the page's own files and the API, on the server's origin; nothing else (`<img src=x>` would be /x)
            watch.allowed = lambda u: u.startswith(srv.url) and re.match(r"^/(\?.*)?$|^/static/|^/v1/",
                                                                          u[len(srv.url):]) is not None
            for query, want in ((f"?index={quote(NAME, safe='')}", {NAME, *(h["label"] for h in items)}),
                                (f"?index={quote(NAME, safe='')}&id={item['id']}",
                                 {NAME, item["label"], item["path"], hostile["meta"][item["id"]]["caption"]})):
                page.goto(f"{srv.url}/{query}")
                # a selector, not wait_for_function: the server's content-security policy forbids eval
                page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=30_000)
                assert page.evaluate("document.body.dataset.state") == "ready", page.locator("#error").text_content()
                # the select's options are text too: documentElement.textContent includes them
                text = _text(page)
                missing = [s for s in want if s not in text]
                assert not missing, f"serve {query}: not shown literally: {missing}"
                assert page.locator("#grid .card").count() > 0
                watch.check(page, f"serve {query}")
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------- F11


def _vectors_index(tmp_path: Path, name: str, vec: np.ndarray) -> dict:
    """An index of imported vectors (a CSV manifest and a .npy: no backbone), and the CLI's environment."""
    from embedsearch.build import BuildConfig, build_index
    from embedsearch.sources.datasets import open_source

    lines = ["id,label,split"] + [f"{i},{'ab'[i % 2]},{'test' if i % 4 == 0 else 'train'}" for i in range(len(vec))]
    (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
    np.save(tmp_path / f"{name}.npy", vec.astype(np.float32))
    build_index(open_source(str(tmp_path / f"{name}.csv"), require_paths=False),
                BuildConfig.of(name=name, root=str(tmp_path / "indexes"), vectors=str(tmp_path / f"{name}.npy"),
                            dtype="float32"), progress=False)
    return {**os.environ, "EMBEDSEARCH_HOME": str(tmp_path / "indexes"),
            "EMBEDSEARCH_TRUST_FILE": str(tmp_path / "trust.json")}


def _map(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedsearch", "map", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_tsne_map_of_identical_vectors_is_a_pca_map_that_says_so_not_a_segfault(tmp_path):
    env = _vectors_index(tmp_path, "same", np.ones((80, 16)))  # ≥ 75 identical vectors segfaulted (rc 139)
    p = _map(env, "same", "--method", "tsne", "-o", str(tmp_path / "same.html"))
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    note = "PCA instead of t-SNE: the 80 items it would be fitted on hold 1 distinct vector"
    assert note in p.stderr and "Traceback" not in p.stderr
    assert note in (tmp_path / "same.html").read_text()


def test_tsne_map_with_many_repeated_vectors_fits_the_distinct_ones(tmp_path):
    rng = np.random.default_rng(0)
    vec = np.vstack([np.ones((76, 16)), rng.normal(size=(6, 16))])
    env = _vectors_index(tmp_path, "mostly", vec)
    p = _map(env, "mostly", "--method", "tsne", "-o", str(tmp_path / "mostly.html"))
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "75 of the 82 fitted items repeat another's vector exactly" in html.unescape(
        (tmp_path / "mostly.html").read_text())
    from embedsearch.reader import Index
    from embedsearch.report.map import projection

    ix = Index.open("mostly", tmp_path / "indexes")
    xy = projection(ix, method="tsne")["xy"]  # the stored projection
    assert np.isfinite(xy).all() and np.ptp(xy[:76], axis=0).max() == 0 and len(np.unique(xy, axis=0)) == 7


def test_umap_map_of_three_items_is_a_pca_map_that_says_so_not_a_traceback(tmp_path):
    env = _vectors_index(tmp_path, "three", np.random.default_rng(1).normal(size=(3, 16)))
    p = _map(env, "three", "--method", "umap", "-o", str(tmp_path / "three.html"))
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    note = "PCA instead of UMAP: the 3 items it would be fitted on hold 3 distinct vectors, and UMAP needs at least 4"
    assert note in p.stderr and "Traceback" not in p.stderr
    assert note in (tmp_path / "three.html").read_text()
