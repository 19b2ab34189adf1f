"""Reading an evaluation selection from the Parquet parts, and prototypes over it, against memory bandwidth.

Imports n × d clustered float16 vectors into a real index (`embedsearch index --vectors`, default part size), then
in one process: the machine's streaming bandwidth (the eval plan's own measurement), pyarrow's decode of the parts'
list column on one thread (the format's floor), `Index.vectors` of the whole selection on one thread and with
READ_THREADS, and prototypes over the result. Shares are bytes of stored float16 per second over the bandwidth.
Writes scripts/bench_read.json and .md.

    python scripts/bench_read.py --n 50000 --dims 2048 3072
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_eval import make_data  # noqa: E402 — the same synthetic data as the other eval benchmarks

HERE = Path(__file__).parent


def best_of(fn, rep=3):
    best = float("inf")
    for _ in range(rep):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[2048, 3072])
    ap.add_argument("--classes", type=int, default=10)
    a = ap.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedsearch import reader
    from embedsearch.evaluate.methods import prototypes as M
    from embedsearch.evaluate.methods.base import measure_rates
    from embedsearch.reader import Index
    from embedsearch.store import parts as store

    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = {**os.environ, "EMBEDSEARCH_HOME": str(tmp / "ix")}
        for dim in a.dims:
            (x, y), _ = make_data(a.n, 1, dim, a.classes)
            np.save(tmp / "v.npy", x)
            pq.write_table(pa.table({"label": [f"c{c}" for c in y]}), tmp / "labels.parquet")
            subprocess.run([sys.executable, "-m", "embedsearch", "-q", "index", str(tmp / "labels.parquet"),
                            "--vectors", str(tmp / "v.npy"), "-n", f"d{dim}"], env=env, check=True)
            ix = Index.open(f"d{dim}", tmp / "ix")
            stored = sum(pq.ParquetFile(p).metadata.num_rows for p in ix.part_paths) * dim * 2
            rates = measure_rates()
            _, t_decode = best_of(lambda: [store.read_part(p) for p in ix.part_paths])  # noqa: B023
            threads = reader.READ_THREADS
            reader.READ_THREADS = 1
            _, t_one = best_of(lambda: ix.vectors())  # noqa: B023
            reader.READ_THREADS = threads
            v, t_read = best_of(lambda: ix.vectors())  # noqa: B023
            yy = ix.select()["class_index"]
            _, t_proto = best_of(lambda: M.prototypes(v, yy, a.classes))  # noqa: B023
            ix.close()
            share = lambda t: round(stored / t / rates.bandwidth, 4)  # noqa: B023, E731
            rows.append({"n": a.n, "dim": dim, "parts": len(ix.part_paths), "stored_bytes": stored,
                         "bandwidth_gb_s": round(rates.bandwidth / 1e9, 1),
                         "decode_1_thread_s": round(t_decode, 3), "decode_share": share(t_decode),
                         "vectors_1_thread_s": round(t_one, 3), f"vectors_{threads}_threads_s": round(t_read, 3),
                         "vectors_share": share(t_read), "prototypes_s": round(t_proto, 3),
                         "prototypes_share": share(t_proto), "read_plus_prototypes_share": share(t_read + t_proto)})
            print(json.dumps(rows[-1]), flush=True)
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "command": "python scripts/bench_read.py " + " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                                                                 for k, v in vars(a).items()),
           "rows": rows}
    (HERE / "bench_read.json").write_text(json.dumps(out, indent=1) + "\n")
    md = ["# Reading a selection from the parts, and prototypes over it", "",
          f"`{out['command']}` on {out['machine']['cores']} cores. Shares are stored float16 bytes per second over "
          "the streaming bandwidth measured in the same run (a float32 sum).", "",
          "| n × d | parts | bandwidth | pyarrow decode, 1 thread | Index.vectors, 1 thread | Index.vectors, "
          f"{reader.READ_THREADS} threads | prototypes | read + prototypes |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['n']:,} × {r['dim']} | {r['parts']} | {r['bandwidth_gb_s']} GB/s | "
                  f"{r['decode_1_thread_s']} s ({r['decode_share']:.1%}) | {r['vectors_1_thread_s']} s | "
                  f"{r[f'vectors_{reader.READ_THREADS}_threads_s']} s ({r['vectors_share']:.1%}) | "
                  f"{r['prototypes_s']} s ({r['prototypes_share']:.1%}) | {r['read_plus_prototypes_share']:.1%} |")
    (HERE / "bench_read.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
