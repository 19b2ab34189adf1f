"""Evaluation methods, one module per family, behind one interface (`base.Method` → `base.Fitted`) and one
registry (`REGISTRY`, kept in each method's `order`; `ORDER` is its names, the order `eval` runs them in). See
base.py for how to add one."""

from embedsearch.evaluate.methods import fewshot, knn, linear, mlp, prototypes, svc, zeroshot  # noqa: F401 — register
from embedsearch.evaluate.methods.base import (
    REGISTRY,
    Context,
    Fitted,
    Method,
    Rates,
    Shape,
    Skipped,
    TrainSet,
    get,
    measure_rates,
)

ORDER = tuple(REGISTRY)  # every method registered by the imports above, in `Method.order`

__all__ = ["ORDER", "REGISTRY", "Context", "Fitted", "Method", "Rates", "Shape", "Skipped", "TrainSet", "get",
           "measure_rates"]
