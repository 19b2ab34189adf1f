"""What the benchmarks share: synthetic data, timers, this machine's description, and where results are saved."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository: `python -m benchmarks` runs from here
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks"
QUICK_NOTE = "--quick: shrunken sizes, a smoke test of the benchmark and the harness; not a measurement"

# what the runner is running (name, results folder, --quick), so that `checkpoint` saves where the final save will
CURRENT: dict = {}


# ---- synthetic data


def make_data(n_train, n_test, d, n_classes, seed=0, spectrum="flat"):
    """Gaussian class clusters, a common offset. spectrum "flat": independent features with scales uniform in
    [0.2, 3] (class centres 0.12 per feature: easier as d grows). "power": correlated features like a backbone's,
    the latent clusters mixed by a random rotation with covariance eigenvalues ∝ 1/i (i = 1…d); the centres are
    scaled by √(384/d), so the classes are as separable at every d as the flat 384-d rows (a linear map changes
    the conditioning a solver sees, not the separability)."""
    rng = np.random.default_rng(seed)
    if spectrum == "flat":
        centers, scales, mix = rng.normal(size=(n_classes, d)) * 0.12, rng.uniform(0.2, 3.0, d), None
    else:
        centers = rng.normal(size=(n_classes, d)) * 0.12 * np.sqrt(384 / d)
        scales = np.sqrt(d / np.arange(1, d + 1) / np.log(d))  # eigenvalues ∝ 1/i, mean variance ≈ 1
        mix = np.linalg.qr(rng.normal(size=(d, d)))[0].astype(np.float32)

    def draw(n, block=65536):
        # a block of rows at a time (the same numbers as one draw of all n: the generator fills them in order), so
        # an ImageNet-sized draw never holds a float64 copy of every row
        y = rng.integers(0, n_classes, n)
        x = np.empty((n, d), np.float32)
        for a in range(0, n, block):
            z = ((centers[y[a:a + block]] + rng.normal(size=(len(y[a:a + block]), d))) * scales).astype(np.float32)
            x[a:a + block] = (z if mix is None else z @ mix) + 2.0
        return x, y

    return draw(n_train), draw(n_test)


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """n float32 vectors around 1,000 standard-normal centres, noise 0.5, generated 100,000 rows at a time."""
    r = np.random.default_rng(seed)
    c = r.standard_normal((1000, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i:i + m] = c[r.integers(0, 1000, m)] + 0.5 * r.standard_normal((m, d)).astype(np.float32)
    return out


def random_images(folder: Path, n: int, size: tuple[int, int], classes: int, *, start: int = 0,
                  suffix: str = ".jpg", digits: int = 6) -> Path:
    """Images `start` … n−1 of uniformly random pixels (height × width = `size`) in class folders c0 … c{classes−1}
    under `folder`, named by their number; JPEGs at quality 90. Seeded by `start`, so a folder can grow."""
    from PIL import Image

    rng = np.random.default_rng(start)
    for i in range(start, n):
        d = folder / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        a = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(a).save(d / f"{i:0{digits}d}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))
    return folder


def sklearn_knn(xtr, ytr, xte, k, T):
    """scikit-learn's KNeighborsClassifier doing the work of embedsearch's kNN (the reference the kNN rows beat)."""
    from sklearn.neighbors import KNeighborsClassifier

    from embedsearch.core.vectors import l2_normalize

    # on L2-normalized vectors, euclidean distance d gives cosine = 1 − d²/2; weights exp(cos/T) are the DINOv2
    # softmax weights up to a per-query constant, so the weighted vote is the same
    w = "uniform" if T is None else (lambda dist: np.exp((1 - dist**2 / 2) / T))
    clf = KNeighborsClassifier(n_neighbors=k, weights=w, algorithm="brute").fit(l2_normalize(xtr), ytr)
    return clf.predict(l2_normalize(xte))


# ---- timers


def timed(fn):
    """(fn(), wall seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def best_of(fn, repeat: int = 5, warmup: bool = False):
    """(the last fn(), the fastest of `repeat` calls' wall seconds), after one untimed call with `warmup`."""
    if warmup:
        fn()
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def limits():
    """This machine's float32 GEMM rate and streaming bandwidth, measured now (~0.3 s): `eval`'s own
    `measure_rates`, so a benchmark states its shares against the numbers `eval`'s plan uses."""
    from embedsearch.evaluate.methods import measure_rates

    return measure_rates()


# ---- this machine


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The first CUDA device's name, or None (torch is imported only if it is already loaded or installed)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict:
    """This machine, as each result records it: CPU model, cores, torch's threads, GPU, RAM, library versions."""
    from embedsearch.core.versions import library_versions

    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    out = {"cpu": cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(),
           "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "torch_threads": threads, "gpu": gpu_name(), "system": f"{platform.system()} {platform.release()}"}
    try:
        out["ram_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    out["versions"] = library_versions(("python", "embedsearch", "torch", "faiss-cpu", "faiss-gpu", "numpy",
                                        "scikit-learn", "pyarrow", "duckdb", "timm"))
    return out


def _slug(text: str) -> str:
    text = re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|\bProcessor\b|@.*$|\b\d+-Core\b", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_slug(m: dict | None = None) -> str:
    """The machine part of a result's file name: [GPU-]CPU-<cores>c, e.g. `nvidia-h200-amd-epyc-16c`."""
    m = m or machine()
    return "-".join(p for p in (_slug(m["gpu"]) if m.get("gpu") else "", _slug(m["cpu"]), f"{m['cores']}c") if p)


# ---- results


def result_path(name: str, *, out: Path | str | None = None, quick: bool = False, slug: str | None = None,
                date: str | None = None, suffix: str = ".json") -> Path:
    """benchmarks/results/<name>/<machine>-<yyyymmdd>[-quick].json (under `out` instead of benchmarks/results)."""
    stem = f"{slug or machine_slug()}-{date or time.strftime('%Y%m%d')}{'-quick' if quick else ''}"
    return Path(out or RESULTS) / name / f"{stem}{suffix}"


def save(name: str, result: dict, *, out: Path | str | None = None, quick: bool = False,
         command: str | None = None) -> Path:
    """Write `result` as benchmarks/results/<name>/<machine>-<yyyymmdd>.json inside an envelope that records the
    benchmark, the date, the command and this machine (`machine()`); a later run on the same machine and day
    replaces it. Returns the path."""
    m = machine()
    doc = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "command": command, "quick": quick,
           **({"note": QUICK_NOTE} if quick else {}), "machine": m, "result": result}
    path = result_path(name, out=out, quick=quick, slug=machine_slug(m))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=jsonable) + "\n")
    tmp.replace(path)
    return path


def checkpoint(result: dict) -> Path | None:
    """Save a run's partial result where the runner will save the whole one (a benchmark that may be stopped
    part-way calls this after each row); a no-op outside the runner."""
    if not CURRENT:
        return None
    return save(CURRENT["name"], result, out=CURRENT.get("out"), quick=CURRENT.get("quick", False),
                command=CURRENT.get("command"))


def load(path: Path | str):
    """A saved result: the benchmark's own document (unwrapped from `save`'s envelope; files written before the
    harness have none). CSV files come back as {"rows": [...]}, values parsed as numbers where they are."""
    path = Path(path)
    if path.suffix == ".csv":
        import csv

        with open(path) as f:
            return {"rows": [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]}
    doc = json.loads(path.read_text())
    return doc["result"] if isinstance(doc, dict) and "benchmark" in doc and "result" in doc else doc


def latest(name: str, *, out: Path | str | None = None, suffixes=(".json",)) -> Path | None:
    """The most recent full (not --quick) result of `name`, by the date in its file name; None if there is none."""
    folder = Path(out or RESULTS) / name
    files = [f for f in folder.glob("*") if f.suffix in suffixes and not f.stem.endswith("-quick")] \
        if folder.is_dir() else []

    def date(f: Path) -> str:
        m = re.search(r"(\d{8})$", f.stem)
        return m.group(1) if m else ""

    return max(files, key=lambda f: (date(f), f.stat().st_mtime), default=None)


def _parse(v: str):
    if v in ("", "None"):
        return None
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return float(v)


def args_from_command(add_arguments, command: str) -> dict:
    """The options a recorded command ran with (each benchmark's defaults filled in): rendering a result saved
    before results recorded their config."""
    import argparse
    import shlex

    ap = argparse.ArgumentParser(add_help=False)
    add_arguments(ap)
    words = shlex.split(command)
    first = next((i for i, w in enumerate(words) if w.startswith("--")), len(words))
    return vars(ap.parse_known_args(words[first:])[0])
