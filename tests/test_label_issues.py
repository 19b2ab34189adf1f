"""Label issues with a decision: how many labels are wrong, and which — on the built-in digits with planted flips."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from embedsearch.build import BuildConfig, build_index
from embedsearch.evaluate import label_issues as L
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source

RATE = 0.08  # planted flips


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    """The 1,797 digits as 64-d pixel vectors (a CSV and .npy, imported as vectors), 8 % of the labels moved to
    another class (seeded)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("flipped")
    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.copy()
    rng = np.random.default_rng(7)
    flip = np.sort(rng.choice(len(y), int(RATE * len(y)), replace=False))
    y[flip] = (y[flip] + rng.integers(1, 10, len(flip))) % 10  # always another class
    lines = ["id,label,split"] + [f"{i},d{c},train" for i, c in enumerate(y)]
    (root / "f.csv").write_text("\n".join(lines) + "\n")
    np.save(root / "f.npy", x)
    build_index(open_source(str(root / "f.csv"), require_paths=False),
                BuildConfig.of(name="f", root=str(root), vectors=str(root / "f.npy"), dtype="float32"),
                progress=False)
    return {"root": root, "x": x, "y": y, "flip": flip}


def _precision_recall(flagged: set, truth: set) -> tuple[float, float]:
    hit = len(flagged & truth)
    return hit / max(1, len(flagged)), hit / len(truth)


def test_decision_estimates_the_planted_rate_and_flags_the_flips(flipped):
    y, flip = flipped["y"], set(flipped["flip"].tolist())
    oof = L.out_of_fold(flipped["x"], y, 10, seed=0)
    flagged, d = L.flag_label_issues(oof.probs, y)
    precision, recall = _precision_recall(set(np.flatnonzero(flagged).tolist()), flip)
    print(f"estimated {d['estimated_wrong']} ({d['estimated_rate']:.3f}), planted {len(flip)} ({RATE}); flagged "
          f"{d['flagged']}: precision {precision:.3f}, recall {recall:.3f}; C {oof.params['linear']['C']:.3g}")
    assert abs(d["estimated_rate"] - RATE) <= 0.03, d["estimated_rate"]
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    assert d["flagged"] == flagged.sum() <= d["estimated_wrong"] == sum(d["estimated_wrong_per_class"])
    # the decision is a function of the probabilities alone: a clean labelling of confident predictions flags nothing
    clean = np.eye(10)[np.arange(200) % 10] * 0.9 + 0.01
    none, d0 = L.flag_label_issues(clean, np.arange(200) % 10)
    assert not none.any() and d0["estimated_wrong"] == 0


def test_flagged_items_are_the_least_self_confident_of_their_class():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4) * 0.3, 400)
    y = rng.integers(0, 4, 400)
    flagged, d = L.flag_label_issues(p, y)
    own = p[np.arange(400), y]
    assert flagged.any()
    for c in range(4):
        mine = (y == c) & (p.argmax(1) != y)
        if flagged[y == c].any():  # every flagged item is below every unflagged candidate of its class
            assert own[flagged & (y == c)].max() <= own[mine & ~flagged].min(initial=1.0)
        assert flagged[y == c].sum() <= d["estimated_wrong_per_class"][c]
    assert not flagged[p.argmax(1) == y].any()  # an item the model agrees with is never flagged


def test_cli_reports_the_estimate_and_stores_the_flags(flipped):
    env = {**os.environ, "EMBEDSEARCH_HOME": str(flipped["root"])}
    p = subprocess.run([sys.executable, "-m", "embedsearch", "label-issues", "f", "-n", "2000", "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads(p.stdout)
    flagged = {r["id"] for r in rows if r["flagged"]}
    precision, recall = _precision_recall(flagged, set(flipped["flip"].tolist()))
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    assert "estimated" in p.stderr and f"flagged {len(flagged)}" in p.stderr, p.stderr[-1000:]
    ix = Index.open("f", flipped["root"])
    _, got = ix.sql("SELECT id FROM items WHERE insight_label_flagged ORDER BY id")
    assert {r[0] for r in got} == flagged
    _, n = ix.sql("SELECT count(insight_label_flagged) FROM items")
    assert n[0][0] == len(flipped["y"])  # every scored item has a decision, flagged or not
    ix.close()
