import pytest
from scipy.stats import binomtest

from embedsearch.report import mcnemar_exact


@pytest.mark.parametrize("b,c", [(0, 0), (3, 252), (10, 12), (0, 5), (40, 20)])
def test_mcnemar_exact_matches_scipy_binomial_test(b, c):
    want = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(want, rel=1e-9, abs=1e-300)
