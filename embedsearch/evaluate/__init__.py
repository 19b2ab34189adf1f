"""Stage 5 — evaluation of an index: selections, the protocols, versioned result JSON (re-exports only).

The record of a run is in run.py, the runner in runner.py, result persistence in results.py, the
methods in methods/ (one module per family), what the data hides in insight.py, the FAISS file's quality in
quality.py, saved classifiers in probes.py."""

from embedsearch.evaluate.results import ResultStore, save_result, save_run, save_summary
from embedsearch.evaluate.run import RESULT_SCHEMA, EvalResult, EvalRun
from embedsearch.evaluate.runner import (
    DEFAULT_TEST,
    DEFAULT_TRAIN,
    METHODS,
    applicable_methods,
    code_digest,
    evaluate,
    has_text_tower,
    library_versions,
    load_selection,
    run_and_commit,
    score_in_blocks,
    setting_key,
)

__all__ = ["DEFAULT_TEST", "DEFAULT_TRAIN", "METHODS", "RESULT_SCHEMA", "EvalResult", "EvalRun",
           "ResultStore", "applicable_methods", "code_digest", "evaluate", "has_text_tower", "library_versions",
           "load_selection", "run_and_commit", "save_result", "save_run", "save_summary", "score_in_blocks",
           "setting_key"]
