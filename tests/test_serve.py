"""`embedsearch serve`: the real server process on 127.0.0.1 (port 0), checked against the CLI and the library."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import CHROMIUM, COLORS, chromium_page, make_image

UPLOAD = {"X-Embedsearch": "1"}  # what makes a POST one that no other site's page can send (serve/app.py Guard)


def _cli(*args, env, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "embedsearch", *args], capture_output=True, text=True, env=env,
                       timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"embedsearch {' '.join(args)} failed: {p.stderr[-2000:]}")
    return p


class Server:
    """`embedsearch serve ... --port 0` as a subprocess; `url` is read from the line it prints."""

    def __init__(self, *args, env, cmd=(sys.executable, "-m", "embedsearch")):
        self.proc = subprocess.Popen([*cmd, "serve", "--port", "0", *args], stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.log: list[str] = []
        line = self.proc.stderr.readline()
        m = re.search(r"(http://\S+)/", line)
        if m is None:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line}{self.proc.stderr.read()}")
        self.url = m.group(1)
        self._reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _env(root: Path) -> dict:
    # a trust file of the test's own (code run, image roots indexed: core/trust.py), also for module-scoped
    # fixtures, which start before the per-test one in conftest
    return {**os.environ, "EMBEDSEARCH_HOME": str(root), "HF_HUB_OFFLINE": "1",
            "EMBEDSEARCH_TRUST_FILE": str(root.parent / "trust.json")}


def _folder(root: Path, n_train: int = 10, n_test: int = 4, start_seed: int = 0) -> Path:
    k = start_seed
    for split, n in (("train", n_train), ("test", n_test)):
        for cls, color in COLORS.items():
            for i in range(n):
                make_image(root / split / cls / f"{cls}_{k}.png", color, size=(24 + i, 20 + i), seed=k)
                k += 1
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One image-folder index (pixels:8, with an eval run and its report) and the server answering for it."""
    base = tmp_path_factory.mktemp("serve")
    env = _env(base / "indexes")
    folder = _folder(base / "images")
    _cli("index", str(folder), "-b", "pixels:8", "--name", "colors", env=env)
    _cli("eval", "colors", "-m", "prototypes,knn", env=env)
    srv = Server("--image-root", str(folder), env=env)
    yield {"srv": srv, "env": env, "folder": folder, "base": base, "url": srv.url,
           "ids": _ids(base / "indexes" / "colors")}
    assert srv.stop() == 0


def _ids(index_dir: Path) -> list[int]:
    """The index's item ids in id order (image-folder ids are hashes of the paths, not 0…n-1)."""
    from embedsearch.reader import Index

    ix = Index.open(index_dir)
    try:
        return ix.select()["id"].tolist()
    finally:
        ix.close()


def _flat(resp: dict) -> list[tuple[str, int, float]]:
    return [(r["query"], h["id"], h["score"]) for r in resp["results"] for h in r["hits"]]


def _cli_hits(env, *args) -> list[tuple[str, int, float]]:
    rows = json.loads(_cli("search", "colors", *args, "--json", env=env).stdout)
    return [(r["query"], r["id"], r["score"]) for r in rows]


def test_search_endpoints_equal_the_cli_bit_for_bit(served, tmp_path):
    url, env, ids = served["url"], served["env"], served["ids"]
    got = httpx.get(f"{url}/v1/indexes/colors/search", params={"id": [ids[3], ids[17]], "k": 7}).json()
    assert _flat(got) == _cli_hits(env, "--id", str(ids[3]), "--id", str(ids[17]), "-k", "7")
    assert len(got["results"]) == 2 and all(len(r["hits"]) == 7 for r in got["results"])
    # a where filter, through GET and POST alike
    where = "split = 'train' AND label = 'red'"
    got = httpx.get(f"{url}/v1/indexes/colors/search", params={"id": ids[40], "k": 5, "where": where}).json()
    cli = _cli_hits(env, "--id", str(ids[40]), "-k", "5", "--where", where)
    assert _flat(got) == cli and {h["label"] for h in got["results"][0]["hits"]} == {"red"}
    post = httpx.post(f"{url}/v1/indexes/colors/search", json={"ids": [ids[40]], "k": 5, "where": where}).json()
    assert _flat(post) == cli
    # vectors, with the stored vectors returned on request
    from embedsearch.reader import Index

    ix = Index.open(Path(env["EMBEDSEARCH_HOME"]) / "colors")
    q = ix.vectors(np.asarray([ids[5], ids[30]]))
    np.save(tmp_path / "q.npy", q)
    got = httpx.post(f"{url}/v1/indexes/colors/search", json={"vectors": q.tolist(), "k": 4,
                                                              "with_vector": True}).json()
    cli = _cli_hits(env, "--vector", str(tmp_path / "q.npy"), "-k", "4")
    assert [(i, s) for _, i, s in _flat(got)] == [(i, s) for _, i, s in cli]
    h = got["results"][0]["hits"][0]
    assert np.array_equal(np.asarray(h["vector"], np.float32), ix.vectors(np.asarray([h["id"]]))[0])
    # the hit's catalog columns ride along
    row = ix.items_by_id([h["id"]])[h["id"]]
    assert {c: h[c] for c in ("path", "label", "split", "class_index", "width", "height")} == \
        {c: row[c] for c in ("path", "label", "split", "class_index", "width", "height")}
    ix.close()


def test_paging_covers_every_hit_exactly_once(served):
    url, env, first = served["url"], served["env"], served["ids"][0]
    everything = _cli_hits(env, "--id", str(first), "-k", "200")
    pages, offset = [], 0
    while True:
        r = httpx.get(f"{url}/v1/indexes/colors/search", params={"id": first, "k": 5, "offset": offset}).json()
        res = r["results"][0]
        pages += [(f"id:{first}", h["id"], h["score"]) for h in res["hits"]]
        assert [h["rank"] for h in res["hits"]] == list(range(offset + 1, offset + 1 + len(res["hits"])))
        if not res["has_more"]:
            break
        offset += 5
    assert pages == everything and len(everything) == 3 * 14 - 1


def test_concurrent_requests_answer_as_sequential_ones(served):
    """The server answers requests in parallel (each thread its own catalog connection, FAISS shared): 16 clients
    at once asking searches by id, by vector and with a filter, item rows and listings get exactly the answers
    the same requests get one at a time."""
    url, ids = served["url"], served["ids"]
    vec = httpx.get(f"{url}/v1/indexes/colors/items/{ids[1]}", params={"with_vector": "true"}).json()["vector"]
    asks = []
    for i in ids[:12]:
        asks += [("GET", "/v1/indexes/colors/search", {"id": i, "k": 7}, None),
                 ("GET", "/v1/indexes/colors/search", {"id": i, "k": 5, "where": "split = 'train'"}, None),
                 ("GET", f"/v1/indexes/colors/items/{i}", {"with_vector": "true"}, None)]
    asks += [("POST", "/v1/indexes/colors/search", None, {"vectors": [vec], "k": 9}),
             ("GET", "/v1/indexes/colors/items", {"where": "label = 'red'", "limit": 5}, None),
             ("GET", "/v1/indexes/colors", None, None)]

    def ask(one, client):
        method, path, params, body = one
        r = client.request(method, path, params=params, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    with httpx.Client(base_url=url, timeout=60) as c:
        one_at_a_time = [ask(a, c) for a in asks]
    local = threading.local()

    def in_parallel(one):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=60)
        return ask(one, local.client)

    with ThreadPoolExecutor(16) as ex:
        for _ in range(3):
            assert list(ex.map(in_parallel, asks)) == one_at_a_time


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_image_upload_equals_cli_image_search(served, tmp_path, fmt):
    url, env = served["url"], served["env"]
    src = next((served["folder"] / "test" / "green").iterdir())
    f = tmp_path / f"q.{fmt.lower()}"
    Image.open(src).convert("RGB").save(f, format=fmt)
    got = httpx.post(f"{url}/v1/indexes/colors/search/image", files={"image": (f.name, f.read_bytes())},
                     data={"k": "6"}, headers=UPLOAD).json()
    cli = _cli_hits(env, "--image", str(f), "-k", "6")
    assert [(i, s) for _, i, s in _flat(got)] == [(i, s) for _, i, s in cli]
    assert got["results"][0]["hits"][0]["label"] == "green"


def test_items_thumbnails_results_reports_and_listing(served):
    url, env = served["url"], served["env"]
    from embedsearch.reader import Index
    from embedsearch.report.html import Thumbnails, to_png

    ix = Index.open(Path(env["EMBEDSEARCH_HOME"]) / "colors")
    i7 = served["ids"][7]
    listing = httpx.get(f"{url}/v1/indexes").json()["indexes"]
    assert [(x["name"], x["items"]) for x in listing] == [("colors", 42)]
    d = httpx.get(f"{url}/v1/indexes/colors").json()
    assert d["dim"] == ix.dim and d["classes"] == ix.classes() and d["splits"] == ["test", "train"]
    assert "path" not in d and d["reports"] and all(f.endswith(".html") for f in d["reports"])
    assert str(served["folder"]) not in json.dumps(d)  # nor where its images are
    item = httpx.get(f"{url}/v1/indexes/colors/items/{i7}", params={"with_vector": True}).json()
    assert item["item"] == json.loads(json.dumps(ix.items_by_id([i7])[i7], default=str))
    assert np.array_equal(np.asarray(item["vector"], np.float32), ix.vectors(np.asarray([i7]))[0])
    r = httpx.get(f"{url}/v1/indexes/colors/items/{i7}/thumbnail", params={"size": 64})
    assert r.headers["content-type"] == "image/png"
    assert r.content == to_png(Thumbnails(ix, image_roots=[served["folder"]]).image(i7, item["item"]["path"]), 64)
    assert Image.open(io.BytesIO(r.content)).size[0] <= 64
    page = httpx.get(f"{url}/v1/indexes/colors/items", params={"where": "label = 'blue'", "limit": 100}).json()
    assert [x["id"] for x in page["items"]] == sorted(ix.select("label = 'blue'")["id"].tolist())
    res = httpx.get(f"{url}/v1/indexes/colors/results").json()["results"]
    _, rows = ix.sql("SELECT method, result FROM results ORDER BY created, run_id")
    assert [(x["method"], x["result"]) for x in res] == [(m, json.loads(j)) for m, j in rows]
    assert {x["method"] for x in res} >= {"prototypes", "knn"}
    rep = httpx.get(f"{url}/v1/indexes/colors/reports/{d['reports'][0]}")
    assert rep.status_code == 200 and "<html" in rep.text
    assert httpx.get(f"{url}/v1/indexes/colors/items/{i7}/image").status_code == 403  # originals are off by default
    spec = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/indexes/{name}/search", "/v1/indexes/{name}/search/image", "/v1/indexes/{name}/items/{item_id}",
            "/v1/indexes/{name}/results"} <= set(spec["paths"])
    docs = httpx.get(f"{url}/docs").text  # served by the package: no CDN
    assert "/v1/indexes/{name}/search/image" in docs and "http" not in docs.replace("/openapi.json", "")
    ix.close()


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 M pixels in a few kB
    return buf.getvalue()


def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_stays_up(served):
    url, one = served["url"], served["ids"][1]
    png = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(png, format="PNG")
    png = png.getvalue()
    S = f"{url}/v1/indexes/colors/search"
    cases = [
        ("post", S, {"content": b"{bad json", "headers": {"content-type": "application/json"}}, 400, "body"),
        ("post", S, {"json": {"ids": ["seven"]}}, 422, "ids.0"),
        ("post", S, {"json": {"ids": [one], "k": "many"}}, 422, "k"),
        ("post", S, {"json": {"ids": [one], "colour": "red"}}, 422, "colour"),
        ("post", S, {"json": {}}, 422, "body"),
        ("post", S, {"content": b'{"vectors": [[NaN' + b", 0.0" * 191 + b"]]}",
                     "headers": {"content-type": "application/json"}}, 422, "vectors"),
        ("post", S, {"json": {"vectors": [[1.0, 2.0]]}}, 422, "vectors"),
        ("post", S, {"json": {"vectors": [[0.0] * 192]}}, 422, "vectors"),
        ("post", S, {"json": {"vectors": [[1e39] * 192]}}, 422, "vectors"),
        ("get", S, {"params": {"id": one, "k": 0}}, 422, "k"),
        ("get", S, {"params": {"id": one, "k": -3}}, 422, "k"),
        ("get", S, {"params": {"id": one, "k": 10**9}}, 422, "k"),
        ("get", S, {"params": {"id": one, "k": 1000, "offset": 9500}}, 422, "offset"),
        ("get", S, {"params": {"id": list(range(65))}}, 422, "id"),
        ("get", S, {"params": {"id": 10**6}}, 404, "id"),
        ("get", S, {"params": {}}, 422, "id"),
        ("get", f"{url}/v1/indexes/nope/search", {"params": {"id": one}}, 404, "name"),
        ("get", f"{url}/v1/indexes/colors/items/999999", {}, 404, "id"),
        ("get", f"{url}/v1/indexes/colors/items/abc", {}, 422, "item_id"),
        ("get", S, {"params": {"id": one, "where": "1=1; DROP TABLE items"}}, 400, "where"),
        ("get", S, {"params": {"id": one, "where": "path IN (SELECT * FROM read_csv('/etc/passwd'))"}}, 400, "where"),
        ("get", S, {"params": {"id": one, "where": "nosuchcolumn = 1"}}, 400, "where"),
        ("get", f"{url}/v1/indexes/colors/items", {"params": {"where": "label = 'x' OR 1=1) --"}}, 400, "where"),
        ("get", f"{url}/v1/indexes/colors/items/{one}/thumbnail", {"params": {"size": 100000}}, 422, "size"),
        ("post", f"{S}/image", {"files": {"image": ("a.txt", b"hello, not an image")}}, 400, "image"),
        ("post", f"{S}/image", {"files": {"image": ("t.png", png[: len(png) // 2])}}, 400, "image"),
        ("post", f"{S}/image", {"files": {"image": ("e.png", b"")}}, 400, "image"),
        ("post", f"{S}/image", {"files": {"image": ("bomb.png", _bomb_png())}}, 413, "image"),
        ("post", f"{S}/image", {"files": {"image": ("big.png", b"\x89PNG" + b"0" * (17 * 2**20))}}, 413, "body"),
        ("post", f"{S}/image", {"data": {"k": "3"}}, 422, "image"),
    ]
    for traversal in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..", "%2e%2e", "colors%2F..%2F..",
                      "colors%00"):
        cases.append(("get", f"{url}/v1/indexes/{traversal}/items/1", {}, 404, None))
    for traversal in ("..%2Fmanifest.json", "%2Fetc%2Fpasswd", "..%2F..%2F..%2Fetc%2Fhosts", "x.html%00.json",
                      "manifest.json"):
        cases.append(("get", f"{url}/v1/indexes/colors/reports/{traversal}", {}, 404, None))
    cases.append(("get", f"{url}/static/..%2Fapp.py", {}, 404, None))
    for method, u, kw, status, field in cases:
        if method == "post":
            kw = {**kw, "headers": {**UPLOAD, **kw.get("headers", {})}}
        r = getattr(httpx, method)(u, timeout=60, **kw)
        assert r.status_code == status, (u, kw.get("params") or kw.get("json"), r.status_code, r.text)
        body = r.json()
        assert set(body) == {"error", "field"} and "\n" not in body["error"], body
        if field is not None:
            assert body["field"] == field, (u, body)
        assert "Traceback" not in r.text
        assert httpx.get(f"{url}/v1/health").json()["ok"] is True
    # and it still answers real queries
    assert httpx.get(S, params={"id": one, "k": 2}).json()["results"][0]["hits"]
    assert "/etc/passwd" not in "".join(served["srv"].log) or all(
        "root:" not in line for line in served["srv"].log)


def test_a_non_loopback_bind_needs_a_token_and_every_request_carries_it(tmp_path):
    env = _env(tmp_path / "indexes")
    _cli("index", "digits", "-b", "pixels:8", "--name", "d", env=env)
    p = _cli("serve", "--host", "0.0.0.0", "--port", "0", env=env, check=False)
    assert p.returncode == 1 and "--token" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    srv = Server("--host", "0.0.0.0", "--token", "s3cret", env=env)
    url = srv.url.replace("0.0.0.0", "127.0.0.1")
    try:
        assert httpx.get(f"{url}/v1/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(f"{url}/v1/indexes", headers=headers)
            assert r.status_code == 401 and r.json()["field"] == "Authorization"
        assert httpx.get(f"{url}/", headers={}).status_code == 401
        ok = httpx.get(f"{url}/v1/indexes/d/search", params={"id": 1}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["results"][0]["hits"]
        # the page: /?token=… sets an HttpOnly cookie and drops the token from the URL
        with httpx.Client(base_url=url) as c:
            r = c.get("/", params={"token": "s3cret", "index": "d"})
            assert r.status_code == 303 and r.headers["location"] == "/?index=d"
            assert "httponly" in r.headers["set-cookie"].lower()
            assert c.get("/v1/indexes").status_code == 200
        assert not any("s3cret" in line for line in srv.log)  # never logged
    finally:
        assert srv.stop(signal.SIGINT) == 0


def test_cors_is_off_unless_asked_for(served):
    r = httpx.get(f"{served['url']}/v1/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_load_during_add_answers_every_request_from_one_snapshot(tmp_path):
    env = _env(tmp_path / "indexes")
    folder = _folder(tmp_path / "images", n_train=30, n_test=10)  # 120 items
    _cli("index", str(folder), "-b", "pixels:8", "--name", "live", env=env)
    srv = Server(env=env)
    url = srv.url
    before = httpx.get(f"{url}/v1/indexes").json()["indexes"][0]
    old_key, n_old = before["snapshot"], before["items"]
    old_ids = _ids(tmp_path / "indexes" / "live")
    _folder(tmp_path / "images", n_train=20, n_test=0, start_seed=1000)  # 60 more files
    adding = subprocess.Popen([sys.executable, "-m", "embedsearch", "index", str(folder), "-b", "pixels:8",
                               "--name", "live", "--add", "--part-size", "16"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = threading.Event()
    responses, failures = [], []

    def client(seed: int):
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(400):  # bounded: at most 400 requests per client
                if done.is_set():
                    break
                i = old_ids[int(rng.integers(0, n_old))]
                r = c.get("/v1/indexes/live/search", params={"id": i, "k": 5})
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                else:
                    responses.append(r.json())

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, s) for s in range(4)]
        assert adding.wait(timeout=300) == 0, adding.stderr.read()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/indexes").json()["indexes"][0]["snapshot"] == old_key:
            assert time.monotonic() < deadline, "the server never switched to the new snapshot"
            time.sleep(0.1)
        time.sleep(0.5)
        done.set()
        for f in futures:
            f.result()
    assert failures == [] and len(responses) > 20
    keys = {r["snapshot"] for r in responses}
    assert old_key in keys
    new = httpx.get(f"{url}/v1/indexes").json()["indexes"][0]
    assert new["items"] == n_old + 60 and keys <= {old_key, new["snapshot"]}
    added = sorted(set(_ids(tmp_path / "indexes" / "live")) - set(old_ids))
    assert len(added) == 60
    for r in responses:  # one snapshot per response: the old one never shows an item the add embedded
        if r["snapshot"] == old_key:
            assert set(h["id"] for h in r["results"][0]["hits"]) <= set(old_ids)
    assert any(set(h["id"] for h in r["results"][0]["hits"]) & set(added) for r in responses
               if r["snapshot"] != old_key)
    # afterwards the new items are found, by id and as neighbours
    got = httpx.get(f"{url}/v1/indexes/live/search", params={"id": added[5], "k": 3}).json()
    assert got["snapshot"] == new["snapshot"] and got["results"][0]["hits"]
    assert httpx.get(f"{url}/v1/indexes/live/items/{added[-1]}").status_code == 200
    assert srv.stop() == 0


def test_text_query_on_a_tiny_open_clip_index(tmp_path, tiny_clip_config):
    env = _env(tmp_path / "indexes")
    folder = _folder(tmp_path / "images", n_train=3, n_test=1)
    _cli("index", str(folder), "-b", f"open_clip:{tiny_clip_config}", "--random-init", "--name", "clip", env=env)
    srv = Server(env=env)
    try:
        got = httpx.get(f"{srv.url}/v1/indexes/clip/search", params={"text": "a red square", "k": 5},
                        timeout=120).json()  # the first text query loads the model
        rows = json.loads(_cli("search", "clip", "--text", "a red square", "-k", "5", "--json", env=env).stdout)
        assert _flat(got) == [(r["query"], r["id"], r["score"]) for r in rows] and len(rows) == 5
        assert httpx.get(f"{srv.url}/v1/indexes/clip").json()["text"] is True
    finally:
        assert srv.stop() == 0


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_page_in_headless_chromium_searches_from_the_url_and_clicks_more_like_this(served, tmp_path):
    url = served["url"]
    with chromium_page((1100, 800)) as (page, errors):
        three = served["ids"][3]
        page.goto(f"{url}/?index=colors&id={three}&where=split%20%3D%20%27train%27")
        # selectors, not wait_for_function: the page's content-security policy forbids the eval it needs
        page.wait_for_selector("body:not([data-state='loading'])", state="attached", timeout=30_000)
        assert page.evaluate("document.body.dataset.state") == "ready"
        cards = page.locator(".card")
        api = httpx.get(f"{url}/v1/indexes/colors/search",
                        params={"id": three, "k": 24, "where": "split = 'train'"}).json()
        assert [int(cards.nth(i).get_attribute("data-id")) for i in range(cards.count())] == \
            [h["id"] for h in api["results"][0]["hits"]]
        assert page.evaluate("[...document.querySelectorAll('.card img')].every(i => i.naturalWidth > 0)")
        target = int(cards.nth(2).get_attribute("data-id"))
        cards.nth(2).click()
        page.wait_for_selector(f"#title:text-is('More like item {target}')", timeout=30_000)
        page.wait_for_selector("body[data-state='ready']", state="attached", timeout=30_000)
        assert f"id={target}" in page.evaluate("location.search")
        first = int(page.locator(".card").first.get_attribute("data-id"))
        again = httpx.get(f"{url}/v1/indexes/colors/search",
                          params={"id": target, "k": 1, "where": "split = 'train'"}).json()
        assert first == again["results"][0]["hits"][0]["id"]
        # an uploaded image (choose a file): its hits, the same as the API's for the same bytes
        src = next((served["folder"] / "test" / "blue").iterdir())
        page.set_input_files("#file", str(src))
        page.wait_for_selector("#title:text-matches('^Like ')", timeout=30_000)
        page.wait_for_selector("body[data-state='ready']", state="attached", timeout=30_000)
        api = httpx.post(f"{url}/v1/indexes/colors/search/image", files={"image": (src.name, src.read_bytes())},
                         data={"k": "24", "where": "split = 'train'"}, headers=UPLOAD).json()
        cards = page.locator(".card")
        assert [int(cards.nth(i).get_attribute("data-id")) for i in range(cards.count())] == \
            [h["id"] for h in api["results"][0]["hits"]]
        shot = tmp_path / "serve-page.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert errors == []

