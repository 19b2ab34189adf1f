"""`embedsearch serve` against the same searches called in-process, in one run: search by id (k = 10) on a
100,000 × 384 index, with 1, 4 and 16 concurrent HTTP clients.

The index holds clustered synthetic vectors (1,000 centres plus noise, float16 as `index` stores them by default)
imported with `--vectors`, so it is an exact (Flat) index like any other. In-process: `search(ix, ids=[i], k=10)`
called back to back in this process. Server: a real `embedsearch serve` process on 127.0.0.1, and C client threads in
this process, each with its own keep-alive connection, sending GET /v1/indexes/NAME/search?id=I&k=10. The same random
ids in the same order for every row. Both share this machine's cores (the clients cost CPU too). The reading:
docs/benchmarks/serve.md.

    python -m benchmarks serve [--n 100000] [--dim 384] [--requests 600]
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks._harness import args_from_command

QUICK = {"n": 2000, "dim": 32, "requests": 60}


def make_index(root: Path, n: int, dim: int) -> str:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    labels = rng.integers(0, 1000, n)
    v = centres[labels] + 0.5 * rng.standard_normal((n, dim), np.float32)
    np.save(root / "v.npy", v)
    with open(root / "m.csv", "w") as f:
        f.write("path,label,split\n")
        for i in range(n):
            f.write(f"img/{i}.jpg,c{labels[i]},{'test' if i % 10 == 0 else 'train'}\n")
    env = {**os.environ, "EMBEDSEARCH_HOME": str(root / "indexes")}
    subprocess.run([sys.executable, "-m", "embedsearch", "-q", "index", str(root / "m.csv"), "--vectors",
                    str(root / "v.npy"), "--name", "bench"], check=True, env=env, stdout=subprocess.DEVNULL)
    return "bench"


def stats(latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {"requests": len(ms), "qps": round(len(ms) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def in_process(root: Path, ids: list[int]) -> dict:
    from embedsearch.query.search import search
    from embedsearch.reader import Index

    ix = Index.open(root / "indexes" / "bench")
    search(ix, ids=ids[:5], k=10)  # warm: FAISS file mapped, catalog copied
    lat = []
    t0 = time.perf_counter()
    for i in ids:
        t = time.perf_counter()
        search(ix, ids=[i], k=10)
        lat.append(time.perf_counter() - t)
    return stats(lat, time.perf_counter() - t0)


def over_http(url: str, ids: list[int], clients: int) -> dict:
    import httpx

    lat: list[float] = []
    failed = []
    chunks = [ids[c::clients] for c in range(clients)]

    def run(chunk):
        with httpx.Client(base_url=url, timeout=60) as c:
            for i in chunk:
                t = time.perf_counter()
                r = c.get("/v1/indexes/bench/search", params={"id": i, "k": 10})
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    failed.append(r.status_code)

    threads = [threading.Thread(target=run, args=(ch,)) for ch in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = stats(lat, time.perf_counter() - t0)
    out["failed"] = len(failed)
    return out


def add_arguments(ap) -> None:
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--requests", type=int, default=600)


def run(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_index(root, args.n, args.dim)
        from embedsearch.reader import Index

        ix = Index.open(root / "indexes" / "bench")
        all_ids = ix.select()["id"]
        ix.close()
        ids = np.random.default_rng(1).choice(all_ids, args.requests).tolist()
        rows = {"in-process": in_process(root, ids)}
        env = {**os.environ, "EMBEDSEARCH_HOME": str(root / "indexes")}
        srv = subprocess.Popen([sys.executable, "-m", "embedsearch", "serve", "bench", "--port", "0"], env=env,
                               stderr=subprocess.PIPE, text=True)
        try:
            url = re.search(r"(http://\S+)/", srv.stderr.readline()).group(1)
            threading.Thread(target=lambda: [None for _ in srv.stderr], daemon=True).start()  # drain the log
            over_http(url, ids[:20], 1)  # warm
            for c in (1, 4, 16):
                rows[f"server, {c} client{'s' if c > 1 else ''}"] = over_http(url, ids, c)
        finally:
            srv.terminate()
            srv.wait(timeout=30)
    base = rows["in-process"]["qps"]
    for r in rows.values():
        r["of_in_process"] = round(r["qps"] / base, 2)
    cmd = f"python -m benchmarks serve --n {args.n} --dim {args.dim} --requests {args.requests}"
    print(json.dumps(rows, indent=1))
    return {"command": cmd, "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                        "python": platform.python_version()}, "rows": rows}


def render(out: dict) -> str:
    args = SimpleNamespace(**args_from_command(add_arguments, out["command"]))
    cmd, rows = out["command"], out["rows"]
    table = "\n".join(f"| {k} | {r['qps']} | {r['p50_ms']} | {r['p99_ms']} | {r['of_in_process']:.2f}× | "
                      f"{r.get('failed', 0)} |" for k, r in rows.items())
    four = rows["server, 4 clients"]["of_in_process"]
    return f"""# Search by id over HTTP against the same search in-process

`{cmd}` on {out['machine']['cores']} cores ({out['machine']['cpu']}, Python {out['machine']['python']}). An exact
index of {args.n:,} × {args.dim} float16 vectors; each request is one search by id with k = 10 (the item's stored
vector read from its part, a FAISS search, the hits' catalog rows). {args.requests} requests per row, the same ids in
the same order.

| | queries/s | p50 ms | p99 ms | throughput vs in-process | failed |
|---|---|---|---|---|---|
{table}

Target: with 4 clients the server reaches at least 50 % of the in-process throughput: **{four:.2f}×**
({'met' if four >= 0.5 else 'not met'}). The clients run in the benchmark's own process and share the two cores with
the server. The server answers one search at a time per index snapshot (its catalog connection is not shared between
threads), so more clients add queueing (p99), not throughput.
"""
