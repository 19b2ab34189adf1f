"""`embedsearch serve`'s app in-process, through `TestClient(create_app(...))`: routes, limits, who may ask.

Each check takes milliseconds. The real server process (signals, snapshot swaps, keep-alive, Chromium):
tests/test_serve.py and tests/test_serve_hostile.py."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import embedsearch
from embedsearch.query.search import search
from embedsearch.reader import Index
from embedsearch.serve import deps
from embedsearch.serve.app import create_app
from embedsearch.serve.settings import Limits, ServeSettings
from embedsearch.serve.snapshots import Registry
from tests.conftest import COLORS, make_image

LOCAL = "http://127.0.0.1:8000"  # a Host a tokenless loopback server answers to
LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]"})
UPLOAD = {"X-Embedsearch": "1"}
S = "/v1/indexes/colors/search"
SECURITY = {"content-security-policy", "x-content-type-options", "referrer-policy", "x-frame-options"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """An image-folder index `colors` (pixels:8, 3 classes × 4 train + 1 test), two reports; its registry."""
    base = tmp_path_factory.mktemp("inprocess")
    k = 0
    for split, n in (("train", 4), ("test", 1)):
        for cls, color in COLORS.items():
            for i in range(n):
                path = base / "images" / split / cls / f"{cls}_{k}.png"
                make_image(path, color, size=(24 + i, 20 + i), seed=k)
                k += 1
    embedsearch.build_index(str(base / "images"), name="colors", backbone="pixels:8", progress=False,
                            root=str(base / "indexes"), num_workers=0)
    reports = base / "indexes" / "colors" / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "summary.html").write_text("<html><body>summary</body></html>")
    (reports / "map-colors.html").write_text("<html><body><script>1</script></body></html>")
    reg = Registry(base / "indexes", ["colors"])
    ix = reg.get("colors").get().ix
    reg.ids = sorted(ix.select()["id"].tolist())  # for the tests: every item id, ascending
    return reg


def client(registry, **settings) -> TestClient:
    """The app as `serve` builds it for a tokenless loopback server, unless `settings` say otherwise."""
    settings.setdefault("hosts", None if settings.get("token") else LOOPBACK)
    return TestClient(create_app(registry, ServeSettings(**settings)), base_url=LOCAL)


def _png(size=(40, 30), color=(10, 200, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def refused(r, status: int, field: str) -> None:
    """A refusal: `status`, one JSON object naming `field`, a one-line message, the security headers."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field and set(body) == {"error", "field"} and "\n" not in body["error"], body
    assert SECURITY <= set(r.headers), r.headers


# -- routing and answers -------------------------------------------------------------------------------------


def test_health_list_describe_and_the_library_agree(registry):
    c = client(registry)
    assert c.get("/v1/health").json()["ok"] is True
    (listed,) = c.get("/v1/indexes").json()["indexes"]
    assert listed["name"] == "colors" and listed["items"] == len(registry.ids) and listed["dim"] == 8 * 8 * 3
    d = c.get("/v1/indexes/colors").json()
    assert "path" not in d and not {"spec", "root", "options"} & set(d["source"])
    assert {"id", "label", "split", "path"} <= set(d["columns"]) and d["splits"] == ["test", "train"]
    assert d["classes"] == sorted(COLORS) and d["reports"] == ["map-colors.html", "summary.html"]
    assert d["originals"] is False and d["text"] is False and d["images"] == {"served": True, "why": None}
    assert c.get("/v1/indexes/colors/results").json()["results"] == []
    assert c.get("/v1/indexes/colors/results", params={"method": "knn"}).json()["results"] == []


def test_search_get_post_and_items_equal_the_library(registry):
    c = client(registry)
    one = registry.ids[0]
    ix = Index.open("colors", root=registry.root)
    want = [(h["id"], h["score"]) for h in search(ix, ids=[one], k=5)]
    got = c.get(S, params={"id": one, "k": 5}).json()
    assert [(h["id"], h["score"]) for h in got["results"][0]["hits"]] == want
    assert got["snapshot"] == registry.get("colors").get().key and got["results"][0]["has_more"] is True
    post = c.post(S, json={"ids": [one], "k": 5}).json()
    assert post["results"] == got["results"]
    vec = ix.vectors(np.asarray([one]))[0].tolist()
    by_vector = c.post(S, json={"vectors": [vec], "k": 1, "with_vector": True}).json()["results"][0]
    by_vector = by_vector["hits"][0]
    assert by_vector["id"] == one and np.allclose(by_vector["vector"], vec)
    paged = c.get(S, params={"id": one, "k": 2, "offset": 2}).json()["results"][0]["hits"]
    assert [h["id"] for h in paged] == [i for i, _ in want[2:4]]
    item = c.get(f"/v1/indexes/colors/items/{one}", params={"with_vector": True}).json()
    assert item["item"]["id"] == one and np.allclose(item["vector"], vec)
    page = c.get("/v1/indexes/colors/items", params={"where": "label = 'red'", "limit": 2}).json()
    assert [x["id"] for x in page["items"]] == sorted(ix.select("label = 'red'")["id"].tolist())[:2]
    assert page["has_more"] is True
    thumb = c.get(f"/v1/indexes/colors/items/{one}/thumbnail", params={"size": 16})
    assert thumb.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 16
    up = c.post(f"{S}/image", files=[("image", ("q.png", _png(), "image/png"))], data={"k": "3"},
                headers=UPLOAD)
    assert up.status_code == 200 and len(up.json()["results"][0]["hits"]) == 3
    ix.close()


def test_page_static_docs_and_openapi_bounds_from_the_limits(registry):
    c = client(registry, limits=Limits(max_k=7, max_window=50))
    assert "<html" in c.get("/").text.lower() and c.get("/static/app.js").status_code == 200
    refused(c.get("/static/index.html"), 404, "file")
    refused(c.get("/static/nope.js"), 404, "file")
    docs = c.get("/docs").text
    assert "/v1/indexes/{name}/search/image" in docs and "http" not in docs.replace("/openapi.json", "")
    spec = c.get("/openapi.json").json()
    k = next(p for p in spec["paths"]["/v1/indexes/{name}/search"]["get"]["parameters"] if p["name"] == "k")
    assert k["schema"]["maximum"] == 7
    assert spec["components"]["schemas"]["SearchBody"]["properties"]["offset"]["maximum"] == 50


def test_reports_are_sandboxed_and_only_listed_names_are_served(registry):
    c = client(registry)
    r = c.get("/v1/indexes/colors/reports/summary.html")
    assert r.status_code == 200 and r.headers["content-security-policy"].startswith("sandbox; ")
    m = c.get("/v1/indexes/colors/reports/map-colors.html").headers["content-security-policy"]
    assert m.startswith("sandbox allow-scripts;") and "script-src 'unsafe-inline' 'unsafe-eval'" in m
    for bad in ("nope.html", "..%2Fmanifest.json", ".hidden.html", "summary.htm"):
        refused(c.get(f"/v1/indexes/colors/reports/{bad}"), 404, "file" if "%2F" not in bad else "path")


def test_originals_only_when_asked_for(registry):
    one = registry.ids[0]
    refused(client(registry).get(f"/v1/indexes/colors/items/{one}/image"), 403, "id")
    r = client(registry, originals=True).get(f"/v1/indexes/colors/items/{one}/image")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "PNG"


def test_the_registry_is_a_dependency_a_test_can_override(registry, tmp_path):
    app = create_app(registry, ServeSettings(hosts=LOOPBACK))
    app.dependency_overrides[deps.registry] = lambda: Registry(tmp_path)  # an empty root
    c = TestClient(app, base_url=LOCAL)
    assert c.get("/v1/indexes").json() == {"indexes": []}
    refused(c.get(S, params={"id": registry.ids[0]}), 404, "name")


# -- 4xx naming the field ------------------------------------------------------------------------------------


def test_bad_requests_are_a_4xx_naming_the_field(registry):
    c = client(registry)
    one, missing = registry.ids[0], max(registry.ids) + 1000
    refused(c.get("/v1/indexes/nope/search", params={"id": one}), 404, "name")
    refused(c.get("/v1/indexes/nope"), 404, "name")
    refused(c.get("/v1/nothing/here"), 404, "path")
    refused(c.put(S, headers=UPLOAD), 405, "request")
    refused(c.get(S), 422, "id")
    refused(c.get(S, params={"id": one, "k": 0}), 422, "k")
    refused(c.get(S, params={"id": one, "k": 1001}), 422, "k")
    refused(c.get(S, params={"id": "x"}), 422, "id.0")
    refused(c.get(S, params={"id": one, "offset": -1}), 422, "offset")
    refused(c.get(S, params={"id": one, "k": 1000, "offset": 9001}), 422, "offset")
    refused(c.get(S, params={"id": one, "where": "nonsense ((("}), 400, "where")
    refused(c.get(S, params={"id": missing}), 404, "id")
    refused(c.post(S, json={}), 422, "body")
    refused(c.post(S, json={"ids": [one], "bogus": 1}), 422, "bogus")
    refused(c.post(S, json={"ids": [one], "k": "many"}), 422, "k")
    refused(c.post(S, content=b"{not json", headers={"Content-Type": "application/json"}), 400, "body")
    refused(c.post(S, json={"vectors": [[1.0, 2.0]]}), 422, "vectors")
    refused(c.post(S, json={"vectors": [[0.0] * 192]}), 422, "vectors")
    refused(c.post(S, json={"vectors": [[1e39] * 192]}), 422, "vectors")
    refused(c.post(S, json={"texts": ["a red thing"]}), 400, "texts")
    refused(c.get(f"/v1/indexes/colors/items/{missing}"), 404, "id")
    refused(c.get(f"/v1/indexes/colors/items/{one}/thumbnail", params={"size": 4}), 422, "size")
    refused(c.get("/v1/indexes/colors/items", params={"limit": 0}), 422, "limit")
    refused(c.get("/v1/indexes/colors/items", params={"where": "no_such_column = 1"}), 400, "where")
    # validation comes before the name is looked up, as it did when the routes were one closure
    refused(c.get("/v1/indexes/nope/search", params={"id": one, "k": 0}), 422, "k")
    assert c.get(S, params={"id": one}).status_code == 200  # and the app answers on


def test_ids_beyond_int64_are_a_422_naming_the_field(registry):
    c = client(registry)
    one = registry.ids[0]
    for big in (2**63, 2**64 + 5, -(2**63) - 1, 10**30):
        refused(c.post(S, json={"ids": [one, big]}), 422, "ids.1")
        refused(c.get(S, params={"id": [big]}), 422, "id.0")
        refused(c.get(f"/v1/indexes/colors/items/{big}"), 422, "item_id")
        refused(c.get(f"/v1/indexes/colors/items/{big}/thumbnail"), 422, "item_id")
    refused(c.get("/v1/indexes/colors/items", params={"offset": 2**63}), 422, "offset")


# -- limits: 413 and 422 before the work ---------------------------------------------------------------------


def test_request_limits_refuse_before_any_search(registry):
    one = registry.ids[0]
    c = client(registry, limits=Limits(max_queries=2, max_rows=20, max_response_bytes=2000))
    refused(c.post(S, json={"ids": [one] * 3}), 422, "ids")
    refused(c.get(S, params={"text": ["a", "b", "c"]}), 422, "text")
    refused(c.get(S, params={"id": one, "k": 5, "offset": 15}), 422, "offset")  # 1 × (5 + 15 + 1) hits > 20
    refused(c.get(S, params={"id": [one, one], "k": 10}), 422, "k")  # 2 × 11 > 20
    # 5 hits × 192 values × 4 B > 2000 B
    refused(c.get(S, params={"id": one, "k": 5, "with_vector": True}), 422, "with_vector")
    assert c.get(S, params={"id": one, "k": 5}).status_code == 200


def test_body_limit_is_a_413_with_or_without_a_declared_length(registry):
    c = client(registry, limits=Limits(max_upload_bytes=1000))
    refused(c.post(f"{S}/image", files=[("image", ("q.png", b"x" * 2000, "image/png"))], headers=UPLOAD),
            413, "body")

    def chunks():  # no Content-Length: the layer counts what it reads
        yield b'{"ids": ['
        for _ in range(400):
            yield b"1, "
        yield b"1]}"

    refused(c.post(S, content=chunks(), headers={"Content-Type": "application/json"}), 413, "body")
    assert c.post(S, json={"ids": [registry.ids[0]]}).status_code == 200


def test_pixel_budgets_and_the_upload_slots(registry):
    img = [("image", (f"q{i}.png", _png((40, 30)), "image/png")) for i in range(3)]  # 1,200 pixels each
    c = client(registry, limits=Limits(max_pixels=1000, max_request_pixels=100_000))
    r = c.post(f"{S}/image", files=img[:1], headers=UPLOAD)  # one image over max_pixels
    refused(r, 413, "image")
    assert "per request" not in r.json()["error"]
    c = client(registry, limits=Limits(max_pixels=2000, max_request_pixels=3000))
    assert c.post(f"{S}/image", files=img[:2], headers=UPLOAD).status_code == 200
    r = c.post(f"{S}/image", files=img, headers=UPLOAD)  # 3,600 pixels in all
    refused(r, 413, "image")
    assert "per request" in r.json()["error"]
    empty = [("image", ("e.png", b"", "image/png"))]
    refused(c.post(f"{S}/image", files=empty, headers=UPLOAD), 400, "image")
    refused(c.post(f"{S}/image", files=[("image", ("t.png", b"not an image", "image/png"))], headers=UPLOAD),
            400, "image")
    busy = client(registry, limits=Limits(max_uploads_at_once=0))  # every slot taken
    r = busy.post(f"{S}/image", files=img[:1], headers=UPLOAD)
    refused(r, 503, "image")
    assert r.headers["retry-after"] == "1"


# -- who may ask: Host, Origin, token, non-simple POSTs ------------------------------------------------------


def test_a_tokenless_server_answers_its_own_host_and_origin_only(registry):
    c = client(registry)
    for host in ("127.0.0.1", "localhost:9", "[::1]:8000", "LOCALHOST"):
        assert c.get("/v1/health", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "127.0.0.1:x"):
        refused(c.get("/v1/indexes", headers={"Host": host}), 421, "Host")
    refused(TestClient(c.app).get("/v1/health"), 421, "Host")  # Host: testserver
    refused(c.get("/v1/indexes", headers={"Origin": "http://evil.example"}), 403, "Origin")
    refused(c.get("/v1/indexes", headers={"Origin": "http://127.0.0.1:9999"}), 403, "Origin")
    assert c.get("/v1/indexes", headers={"Origin": LOCAL}).status_code == 200
    # a form post (no preflight needed): refused before its body is read
    form = c.post(f"{S}/image", files=[("image", ("q.png", _png(), "image/png"))])
    refused(form, 403, "X-Embedsearch")
    refused(c.post(S, content=b'{"ids": [1]}', headers={"Content-Type": "text/plain"}), 403, "X-Embedsearch")


def test_cors_lets_one_other_origin_call(registry):
    c = client(registry, cors="http://app.example")
    r = c.get("/v1/indexes", headers={"Origin": "http://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    pre = c.options(S, headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                                "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://app.example"
    refused(c.get("/v1/indexes", headers={"Origin": "http://evil.example"}), 403, "Origin")
    assert "access-control-allow-origin" not in client(registry).get("/v1/indexes").headers


def test_a_token_is_needed_for_everything_but_health(registry):
    c = client(registry, token="s3cret")
    assert c.get("/v1/health").status_code == 200
    refused(c.get("/v1/indexes"), 401, "Authorization")
    refused(c.get("/v1/indexes", headers={"Authorization": "Bearer wrong"}), 401, "Authorization")
    refused(c.get("/v1/indexes", headers={"Authorization": "Bearer é".encode()}), 401, "Authorization")
    refused(c.get("/v1/indexes", headers={"Cookie": "embedsearch_token=é".encode()}), 401, "Authorization")
    refused(c.get("/", params={"token": "é"}), 401, "Authorization")
    auth = {"Authorization": "Bearer s3cret"}
    assert c.get("/v1/indexes", headers=auth).status_code == 200
    # any Host: a server with a token may listen beyond loopback
    assert c.get("/v1/indexes", headers={**auth, "Host": "box.lan:8000"}).status_code == 200
    # the token makes a POST non-simple: no X-Embedsearch needed
    upload = [("image", ("q.png", _png(), "image/png"))]
    assert c.post(f"{S}/image", files=upload, headers=auth).status_code == 200
    # the page: /?token=… once sets an HttpOnly, SameSite=Strict cookie and redirects to a URL without it
    r = c.get("/", params={"token": "s3cret", "q": "1"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?q=1"
    cookie = r.headers["set-cookie"].lower()
    assert "embedsearch_token=s3cret" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert c.get("/v1/indexes", headers={"Cookie": "embedsearch_token=s3cret"}).status_code == 200


# -- every answer: security headers; a fault: a JSON 500 -----------------------------------------------------


def test_every_answer_carries_the_security_headers(registry):
    c = client(registry)
    one = registry.ids[0]
    for path in ("/", "/static/app.js", "/docs", "/v1/health", "/v1/indexes", f"{S}?id={one}",
                 f"/v1/indexes/colors/items/{one}/thumbnail", "/v1/nothing", f"{S}?k=0"):
        r = c.get(path)
        assert SECURITY <= set(r.headers), path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert c.get("/").headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")


def test_an_unexpected_exception_is_a_json_500_and_the_app_answers_on(registry, monkeypatch, capfd):
    from embedsearch.serve.routers import search as search_routes

    def boom(*a, **k):
        raise RuntimeError("planted fault")

    monkeypatch.setattr(search_routes, "iter_search", boom)
    c = client(registry)
    one = registry.ids[0]
    r = c.get(S, params={"id": one})
    assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError); see the server log",
                                                 "field": "server"}
    assert SECURITY <= set(r.headers)
    assert c.get(f"/v1/indexes/colors/items/{one}").status_code == 200
    assert 'GET /v1/indexes/colors/search?id=' in capfd.readouterr().err  # the access log line, as uvicorn's


def test_the_access_log_never_shows_the_token(registry, capfd):
    c = client(registry, token="s3cret")
    c.get("/", params={"token": "s3cret"}, follow_redirects=False)
    c.get("/v1/indexes", headers={"Authorization": "Bearer s3cret"})
    err = capfd.readouterr().err
    assert '"GET /?token=%E2%80%A6" 303' in err and '"GET /v1/indexes" 200' in err and "s3cret" not in err
