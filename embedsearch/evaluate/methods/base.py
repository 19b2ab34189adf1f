"""The one interface every evaluation method implements, and the registry `eval`, `classify`, the reports and
`index-quality` find them in.

A `Method` is fitted on train vectors and returns one or more `Fitted` variants (kNN: weighted and majority vote;
SVC: RBF and linear). A `Fitted` scores any vectors, records the parameters it actually used, and — for the probes
`embedsearch classify` applies to new images — turns into plain tensors and back (`tensors` / `Method.load`), so a
saved probe scores with the very code that produced the eval numbers.

To add a method: a module in this package with a `Method` subclass decorated with `@register`, imported in
`methods/__init__.py`. Hyper-parameters are chosen on `heldout(...)`, a part of train, never on test
(docs/protocols.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from embedsearch.core.errors import EvalError

HOLDOUT = 0.1  # the fraction of each class of train held out to choose hyper-parameters


@dataclass
class TrainSet:
    """The train selection: vectors as stored, class indices, catalog ids; `n_classes` counts all the index's
    classes (a class without train items gets no prediction)."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    n_classes: int
    seed: int = 0


@dataclass
class Context:
    """What some methods need besides the vectors: the opened index (zero-shot's text tower, the source kind), the
    prompt file, the kNN settings."""

    ix: object = None
    prompts: str | None = None
    knn_ks: tuple[int, ...] = (10, 20, 100, 200)
    knn_t: float = 0.07
    n_test: int = 0  # rows of the test selection (the SVC policy's estimate counts predicting them)
    svc: str = "auto"  # SVC policy: "exact" RBF, "nystroem" approximation, or "auto" (exact when it fits the budget)


@dataclass(frozen=True)
class Shape:
    """The sizes a method's cost depends on: train rows, test rows, dimension, classes, bytes per stored value."""

    n: int
    m: int
    d: int
    C: int
    itemsize: int = 4


@dataclass(frozen=True)
class Rates:
    """This machine's float32 matrix-product rate (FLOP/s) and memory bandwidth (bytes/s), measured at the start of
    a run (`measure_rates`): the plan's estimates are counts of FLOPs and bytes divided by these."""

    flops: float
    bandwidth: float

    def to_dict(self) -> dict:
        return {"float32_gemm_gflops": round(self.flops / 1e9, 1), "memory_gbytes_per_s": round(self.bandwidth / 1e9, 1),
                "measured_by": "torch 1024³ float32 matmul; torch sum over 256 MB, all threads (best of 3 each)"}


def measure_rates() -> Rates:
    """~0.3 s: the best of 3 for a 1024³ float32 product and a 256 MB streaming sum (torch, all threads; a
    one-thread numpy sum measured 7 GB/s where torch's read 20 GB/s on the 2-core dev machine)."""
    import time

    import torch

    a = torch.randn(1024, 1024)
    best_f = best_b = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ a
        best_f = min(best_f, time.perf_counter() - t0)
    big = torch.ones(2 ** 26)  # a sum with all threads: numpy's one-thread sum is compute-bound on some CPUs
    for _ in range(3):
        t0 = time.perf_counter()
        big.sum()
        best_b = min(best_b, time.perf_counter() - t0)
    return Rates(flops=2 * 1024 ** 3 / best_f, bandwidth=big.numel() * 4 / best_b)


@dataclass
class Fitted:
    """One fitted variant of a method. Subclasses implement `scores`."""

    method: str
    variant: str
    params: dict = field(default_factory=dict)
    uses_train: bool = True  # False for zero-shot: classes absent from train can still be predicted
    probabilities: bool = False  # `classify` shows softmax(scores) (linear, MLP) instead of raw scores

    def scores(self, x: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """(len(x), n_classes) class scores, higher is better; -inf for a class the variant cannot predict.
        `ids`: the catalog ids of `x`, when they are indexed items (kNN drops each one's own vector)."""
        raise NotImplementedError

    def tally(self, x: np.ndarray, y: np.ndarray, ids: np.ndarray | None = None) -> dict[str, dict[str, int]]:
        """Diagnostics on the test selection after the fact (kNN's k-sweep), never used to choose a parameter: for
        one block of test rows, {param name: {key: items correct}}; eval sums the blocks and records the fractions.
        Default: none."""
        return {}

    def tensors(self) -> dict[str, np.ndarray] | None:
        """The fitted state as plain arrays for a saved probe; None: this variant is not saved."""
        return None


@dataclass
class Skipped(Fitted):
    """A variant that cannot run on this selection (a degenerate setting), recorded with its reason instead of a
    number computed from nothing."""

    reason: str = ""


class Method:
    """A family of classifiers on frozen vectors."""

    name: str = ""
    kind: str = "classifier"  # "curve": a study that returns a curve, not scores (few-shot)
    needs: str | None = None  # a capability of the index's backbone the method needs ("text": a text tower)
    order: int = 100  # where `eval` runs it and `--methods` lists it, ascending: cheap and basic first

    def fit(self, train: TrainSet, ctx: Context) -> list[Fitted]:
        raise NotImplementedError

    def estimate(self, shape: Shape, rates: Rates, ctx: Context) -> float | None:
        """Roughly how many seconds `fit` plus scoring the test rows will take (the up-front plan `eval` prints):
        the method's FLOPs and bytes over the measured rates. None: no estimate."""
        return None

    def load(self, t: dict[str, np.ndarray], meta: dict) -> Fitted:
        """A saved probe back into a Fitted (methods whose variants save `tensors`)."""
        raise EvalError(f"{self.name} probes are not saved")

    def shapes(self, t: dict[str, np.ndarray], dim: int, n_classes: int) -> dict[str, tuple]:
        """The shape each saved tensor must have for an index of this dim and class count."""
        return {}


REGISTRY: dict[str, Method] = {}  # kept in `Method.order`: the order `eval` runs and lists them


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls()
    ordered = sorted(REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0]))
    REGISTRY.clear()
    REGISTRY.update(ordered)
    return cls


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise EvalError(f"unknown method {name!r}: expected one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def holdout_split(y: np.ndarray, frac: float = HOLDOUT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of train positions into (fit, held-out); classes with one item stay in fit."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(y):
        pos = np.flatnonzero(y == c)
        pos = pos[rng.permutation(len(pos))]
        n = int(round(frac * len(pos))) if len(pos) > 1 else 0
        n = max(n, 1) if len(pos) > 1 else 0
        held.append(pos[:n])
        fit.append(pos[n:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def one_class(y: np.ndarray, method: str) -> None:
    """Refuse a train selection of one class: a classifier trained on it has nothing to tell apart (scikit-learn's
    SVC raised a traceback; the others chose their hyper-parameters on a held-out part they trivially got right)."""
    present = np.unique(y)
    if len(present) < 2:
        raise EvalError(f"{method}: the train selection has items of {len(present)} class"
                        f"{'' if len(present) == 1 else 'es'}; a classifier needs at least 2 (prototypes and kNN "
                        "still run)")


def heldout(y: np.ndarray, seed: int, method: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """`holdout_split`, refusing a split with nothing held out (every class has one train item: a parameter
    chosen on it would be chosen on nothing); returns (fit, held, a record of the split for the params)."""
    one_class(y, method)
    fit, held = holdout_split(y, seed=seed)
    counts = np.bincount(y)
    singles = int((counts == 1).sum())
    if len(held) == 0:
        raise EvalError(f"{method}: no train item can be held out to choose its hyper-parameters (every class "
                        f"has at most one train item); use prototypes or kNN, or select more train items")
    record = {"selection": f"held-out {HOLDOUT:.0%} of each class of train, stratified, seed {seed} "
                           f"({len(held)} items); refit on all of train"}
    if singles:
        record["classes_with_one_train_item"] = f"{singles} (kept in the fit part, not represented in held-out)"
    return fit, held, record
