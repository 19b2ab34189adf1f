"""The classifiers of docs/protocols.md on frozen vectors: prototypes, weighted kNN, linear / SVC / MLP probes, zero-shot.

Every function takes train arrays and returns something that scores test vectors; hyper-parameters are chosen on a
seeded stratified held-out part of train (`holdout_split`) and never see test data.
"""

from __future__ import annotations

import logging

import numpy as np

from embedsearch.core.vectors import l2_normalize

log = logging.getLogger(__name__)

KNN_KS = (10, 20, 100, 200)
KNN_T = 0.07
LINEAR_C_GRID = np.logspace(-6, 5, 45)
HOLDOUT = 0.1
SVC_WARN_N = 50_000


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


# --------------------------------------------------------------------------------------------- prototypes


def prototypes(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """prototype_c = normalize(mean of normalize(e_i) over train items of class c); (C, d) and a has-prototype mask."""
    xn = l2_normalize(x)
    d = x.shape[1]
    sums = np.zeros((n_classes, d), np.float64)
    np.add.at(sums, y, xn)
    counts = np.bincount(y, minlength=n_classes)
    protos = l2_normalize(sums / np.maximum(counts, 1)[:, None])
    return protos, counts > 0


def prototype_scores(protos: np.ndarray, has: np.ndarray, q: np.ndarray) -> np.ndarray:
    s = l2_normalize(q) @ protos.T
    s[:, ~has] = -np.inf  # a class with no train item cannot be predicted
    return s


# --------------------------------------------------------------------------------------------- kNN


def knn_neighbours(bank: np.ndarray, q: np.ndarray, kmax: int, bank_ids=None, q_ids=None, ks=None):
    """Exact cosine top-kmax over the whole bank; drops a query's own id. (sims, bank positions), best first.

    FAISS's exact k-NN (blocked float32 BLAS with a fused top-k heap, BLAS from 20 queries on, see index.search)
    finds a few more than kmax candidates; then the neighbour *set* at each cut-off in `ks` (default: kmax) is made
    exact: float32 similarities are within EPS of the float64 ones, so where two candidates on either side of a
    cut-off are closer than 2·EPS the run of near-ties around it is re-ranked in float64 (`certify_cutoffs`). The
    result is the float64 ranking's k-NN, whatever the BLAS, blocking or thread count. sims are float32 values
    (float64 where re-ranked).
    """
    import faiss

    from embedsearch.store.faiss_index import use_blas_from

    b, qq = l2_normalize(bank), l2_normalize(q)
    self_pos = np.full(len(qq), -1, np.int64)
    if bank_ids is not None and q_ids is not None:
        order = np.argsort(bank_ids, kind="stable")
        at = np.clip(np.searchsorted(np.asarray(bank_ids)[order], q_ids), 0, max(len(order) - 1, 0))
        hit = len(order) > 0 and np.asarray(bank_ids)[order][at] == np.asarray(q_ids)
        self_pos = np.where(hit, order[at], -1)
    drop = int((self_pos >= 0).any())
    k = min(kmax + drop + KNN_MARGIN + kmax // 8, len(b))
    use_blas_from(b.shape[1])
    sims, idx = faiss.knn(qq, b, k, metric=faiss.METRIC_INNER_PRODUCT)
    if drop:  # remove each query's own position; rows without it lose their last column instead
        own = idx == self_pos[:, None]
        own[~own.any(axis=1), -1] = True
        sims = sims[~own].reshape(len(qq), k - 1)
        idx = idx[~own].reshape(len(qq), k - 1)
    # per row: every bank item is a candidate (its own item aside), so nothing outside the list can enter
    complete = idx.shape[1] >= len(b) - (self_pos >= 0)
    sims, idx = certify_cutoffs(b, qq, sims.astype(np.float64), idx, ks or (kmax,), complete, self_pos)
    return sims[:, :kmax], idx[:, :kmax]


def _exact_topk64(b, q, k, self_pos=None, chunk=8192):
    """float64 top-k of q against the whole bank, streamed over bank chunks; ties: lower bank position first."""
    q64 = q.astype(np.float64)
    best_s = np.full((len(q), 0), -np.inf)
    best_i = np.zeros((len(q), 0), np.int64)
    for s0 in range(0, len(b), chunk):
        s64 = q64 @ b[s0:s0 + chunk].astype(np.float64).T
        if self_pos is not None:
            own = (self_pos >= s0) & (self_pos < s0 + s64.shape[1])
            s64[np.flatnonzero(own), self_pos[own] - s0] = -np.inf
        cand_s = np.concatenate([best_s, s64], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(s0, s0 + s64.shape[1]), s64.shape)], axis=1)
        if cand_s.shape[1] > k:  # keep everything tied with the k-th value, so the tie-break below is exact
            kth = -np.partition(-cand_s, k - 1, axis=1)[:, [k - 1]]
            keep = cand_s >= kth
            width = int(keep.sum(axis=1).max())
            pos = np.argsort(~keep, axis=1, kind="stable")[:, :width]
            cand_s, cand_i = np.take_along_axis(cand_s, pos, 1), np.take_along_axis(cand_i, pos, 1)
            cand_s[~np.take_along_axis(keep, pos, 1)] = -np.inf
        o = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]  # higher first, then the lower bank position
        best_s, best_i = np.take_along_axis(cand_s, o, 1), np.take_along_axis(cand_i, o, 1)
    return best_s, best_i


KNN_MARGIN = 8  # candidates beyond kmax (plus kmax/8), so a run of near-ties at kmax rarely reaches the list's end


def float32_dot_error(d: int) -> float:
    """Bound on |float32 dot − exact dot| for two unit vectors of dimension d, any summation order, FMA or not
    (Higham's γ_d = d·u/(1 − d·u) times Σ|q_j x_j| ≤ ‖q‖·‖x‖, which is ≤ 1 + 1e-5 for float32-normalized vectors)."""
    u = 2.0 ** -24
    return (d * u / (1 - d * u)) * (1 + 1e-5)


def certify_cutoffs(b, q, sims, idx, ks, complete, self_pos=None):
    """Make the top-k set exact (float64) at each cut-off k in `ks` of float32 candidate lists sorted best first.

    The float32 order is certain between candidates more than 2·EPS apart. At a cut-off whose gap is smaller, the
    run of candidates linked by gaps ≤ 2·EPS around it is re-scored in float64 and the row re-sorted; a run that
    reaches the end of the list (items outside it could belong) makes the row fall back to a float64 search over the
    whole bank, as does a cut-off at the list's end on a row whose list is not the whole bank. Ties in float64 keep
    the lower bank position first. `sims` (float64) and `idx` are changed in place."""
    eps2 = 2 * float32_dot_error(b.shape[1])
    n, K = idx.shape
    if n == 0 or K == 0:
        return sims, idx
    small = (sims[:, :-1] - sims[:, 1:]) <= eps2             # gap between positions j and j+1 is uncertain
    comp = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(~small, axis=1)], axis=1)  # run id per position
    mark = np.zeros((n, K), bool)
    for k in sorted({k for k in ks if 0 < k < K}):
        amb = small[:, k - 1]
        mark |= amb[:, None] & (comp == comp[:, [k - 1]])
    # a cut-off at or past the list's end cannot be checked against the items outside it
    full = (mark[:, -1] | any(k >= K for k in ks)) & ~np.broadcast_to(complete, (n,))
    rows = np.flatnonzero(mark.any(axis=1) & ~full)
    if len(rows):
        r, c = np.nonzero(mark[rows])
        r = rows[r]
        exact = np.empty(len(r))
        for s in range(0, len(r), 16384):  # products of float32 are exact in float64; the sum is float64
            sl = slice(s, s + 16384)
            exact[sl] = np.einsum("pd,pd->p", q[r[sl]], b[idx[r[sl], c[sl]]], dtype=np.float64)
        # each run keeps its positions (it is isolated by gaps > 2·EPS); sort its items within them
        items = idx[r, c]
        o = np.lexsort((items, -exact, comp[r, c], r))
        sims[r, c], idx[r, c] = exact[o], items[o]
    full = np.flatnonzero(full)
    if len(full):
        sims[full], idx[full] = _exact_topk64(b, q[full], K, None if self_pos is None else self_pos[full])
    return sims, idx


class ExactSims:
    """float64 cosine similarities of chosen query rows to their neighbours `idx`, computed once per row (for
    re-voting near-tied rows, `knn_scores`)."""

    def __init__(self, bank: np.ndarray, q: np.ndarray, idx: np.ndarray):
        self.bank, self.q, self.idx = bank, q, idx
        self.eps = float32_dot_error(bank.shape[1])  # how far the float32 similarities can be off
        self.sims = np.zeros(idx.shape)
        self.done = np.zeros(len(idx), bool)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        for r in rows[~self.done[rows]]:  # one float64 matrix-vector product per row
            b, q = l2_normalize(self.bank[self.idx[r]]), l2_normalize(self.q[r:r + 1])[0]
            self.sims[r] = b.astype(np.float64) @ q.astype(np.float64)
        self.done[rows] = True
        return self.sims[rows]


def knn_scores(sims: np.ndarray, labels: np.ndarray, k: int, n_classes: int, T: float | None = KNN_T,
               exact: ExactSims | None = None, ranks=(1, 3, 5)) -> np.ndarray:
    """DINOv2 weighted vote: softmax(sim / T) over the k neighbours, summed per class; T=None: majority vote.

    With `exact`, rows where float32 similarity errors could change which classes are in the top r (r in `ranks`:
    the r-th and (r+1)-th class scores closer than the factor exp(±2·EPS/T) each score can move by) are voted again
    with float64 similarities, so top-1/3/5 equal a float64 computation's."""
    def vote(s, lab):
        s = s[:, :k].astype(np.float64)
        if T is None:
            w = np.ones_like(s)
        else:
            w = np.exp((s - s.max(axis=1, keepdims=True)) / T)
            w /= w.sum(axis=1, keepdims=True)
        out = np.zeros((len(s), n_classes))
        np.add.at(out, (np.repeat(np.arange(len(s)), lab.shape[1]), lab.ravel()), w.ravel())
        return out

    lab = labels[:, :k]
    out = vote(sims, lab)
    cut = [r for r in ranks if r < n_classes]
    if exact is not None and T is not None and len(out) and cut:
        top = -np.sort(-out, axis=1)[:, :max(cut) + 1]
        a, b = top[:, [r - 1 for r in cut]], top[:, cut]
        near = ((a - b) <= (a + b) * np.expm1(2 * exact.eps / T)) & (b > 0)
        rows = np.flatnonzero(near.any(axis=1))
        if len(rows):
            out[rows] = vote(exact(rows), lab[rows])
    return out


# --------------------------------------------------------------------------------------------- linear probe


def _fit_logreg(pre, y, n_classes: int, C: float, init=None, max_iter: int = 1000, tol: float = 1e-6):
    """Multinomial logistic regression with L2 penalty by L-BFGS (torch, float64), diagonally preconditioned.

    Solves sklearn's objective C·Σ CE + ½‖W‖² (divided by C·n; bias unpenalized) for raw features. With
    W = V/s per feature and s² = h·σ² + λ (λ = 1/(C·n), h = p(1−p) at uniform p) the diagonal of the Hessian is
    ≈ 1 for every C, so L-BFGS needs tens of iterations instead of hundreds; the optimum is the same (an exact
    change of variables; centring is exact because the bias is unpenalized). `init`/return: raw (W, b)."""
    import torch

    n, d = pre.X.shape
    lam = 1.0 / (C * n)
    h = (1.0 / n_classes) * (1.0 - 1.0 / n_classes)
    s = torch.sqrt(h * pre.sd_t**2 + lam)                      # per-feature scale of V
    r = (pre.sd_t / s)[:, None]                                # X_std @ (r·V) = (x − μ) @ (V / s)
    if init is None:
        V = torch.zeros(d, n_classes, dtype=pre.X.dtype, device=pre.X.device)
        b = torch.zeros(n_classes, dtype=pre.X.dtype, device=pre.X.device)
    else:
        W0, b0 = init
        V, b = W0 * s[:, None], b0 + pre.mu_t @ W0
    V, b = V.clone().requires_grad_(True), b.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([V, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")
    inv_s2 = (1.0 / s**2)[:, None]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(pre.X @ (r * V) + b, y) + 0.5 * lam * (inv_s2 * V * V).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W = V.detach() / s[:, None]
    return W, b.detach() - pre.mu_t @ W


FLOAT64_BUDGET = 2.5e8  # n·d·classes up to which the probe solves in float64 ("where affordable")


class _Preconditioned:
    """The centred, standardized copy of one fitting set (float64 by default, on the probe's device)."""

    def __init__(self, x: np.ndarray, device: str, dtype=None):
        import torch

        dtype = dtype or torch.float64
        x64 = np.asarray(x, np.float64)
        mu = x64.mean(0)
        sd = x64.std(0)
        # any positive scale is exact; the floor keeps near-constant features (border pixels) from blowing up
        floor = 0.1 * float(np.median(sd[sd > 0])) if (sd > 0).any() else 1.0
        sd = np.maximum(sd, floor)
        self.X = torch.from_numpy((x64 - mu) / sd).to(device, dtype)
        self.mu_t = torch.from_numpy(mu).to(device, dtype)
        self.sd_t = torch.from_numpy(sd).to(device, dtype)


def linear_probe(xtr, ytr, n_classes: int, seed: int = 0, grid=LINEAR_C_GRID, device: str | None = None):
    """C chosen on the held-out 10 % of train over a coarse pass of `grid` refined around the best, then refit on
    all of train. Returns (predict_scores_fn, params, (W, b)) with W, b acting on raw features."""
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # float64 where affordable; above the budget float32 is ~4× faster per step and, measured on 50k×384×100,
    # reaches the same accuracy in a fraction of the iterations
    dtype = torch.float64 if len(xtr) * xtr.shape[1] * n_classes <= FLOAT64_BUDGET else torch.float32
    fit, held = holdout_split(ytr, seed=seed)
    pre = _Preconditioned(xtr[fit], dev, dtype)
    Y = torch.from_numpy(np.asarray(ytr, np.int64)).to(dev)
    x_held = torch.from_numpy(np.asarray(xtr[held], np.float64)).to(dev, dtype)
    y_held = Y[held]
    tried: dict[int, float] = {}

    def score(i, init=None):
        W, b = _fit_logreg(pre, Y[fit], n_classes, float(grid[i]), init)
        tried[i] = float(((x_held @ W + b).argmax(1) == y_held).double().mean())
        return W, b

    coarse = list(range(0, len(grid), 4))
    if coarse[-1] != len(grid) - 1:
        coarse.append(len(grid) - 1)
    init, worse = None, 0
    for i in coarse:  # increasing C: warm start from the more regularized solution (the problem is convex)
        init = score(i, init)
        worse = worse + 1 if tried[i] < max(tried.values()) else 0
        if worse == 3:  # held-out accuracy fell for 3 coarse steps (3 decades): larger C only overfits more
            break
    best = max(tried, key=lambda i: (tried[i], -i))
    for i in range(max(0, best - 2), min(len(grid), best + 3)):
        if i not in tried:
            score(i)
    best = max(tried, key=lambda i: (tried[i], -i))  # ties: the stronger regularization
    C = float(grid[best])
    W, b = (t.cpu().double().numpy() for t in _fit_logreg(_Preconditioned(xtr, dev, dtype), Y, n_classes, C))

    def predict(q):
        return np.asarray(q, np.float64) @ W + b

    params = {"C": C, "C_grid": "10^linspace(-6, 5, 45): every 4th value (stopping after 3 steps of falling held-out "
                                "accuracy), then ±2 grid steps around the best",
              "C_tried": {f"{grid[i]:.3g}": round(a, 5) for i, a in sorted(tried.items())},
              "selection": f"held-out {HOLDOUT:.0%} of train, stratified, seed {seed}; refit on all of train",
              "features": "raw (unnormalized); solved in a diagonally preconditioned parametrization with the "
                          "same optimum",
              "solver": f"L-BFGS (torch, {str(dtype).removeprefix('torch.')}), strong Wolfe, max_iter 1000, "
                        "gradient tolerance 1e-6, warm-started along the coarse grid",
              "dtype": str(dtype).removeprefix("torch."),
              "penalty": "L2, C·ΣCE + ½‖W‖² (sklearn's objective)", "device": dev}
    return predict, params, (W, b)


# --------------------------------------------------------------------------------------------- SVC


def svc_probe(xtr, ytr, kind: str = "rbf", seed: int = 0):
    """`rbf`: SVC(kernel="rbf", gamma="scale", C=1) as in the notebooks; `linear`: LinearSVC with C chosen on the
    held-out part. Both on standardized features (cuML's SVC when installed)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr)
    Xs = scaler.transform(xtr)
    if kind == "rbf":
        n = len(xtr)
        if n > SVC_WARN_N:
            est = 1e-9 * n * n * xtr.shape[1] / 384
            log.warning("RBF SVC on %d training items costs O(n²): expect on the order of %.0f min on CPU; "
                        "install cuML for GPU SVC, or use the linear probe", n, est / 60)
        try:
            from cuml.svm import SVC as _SVC  # noqa: N811
            backend = "cuml"
        except ImportError:
            from sklearn.svm import SVC as _SVC  # noqa: N811
            backend = "sklearn"
        clf = _SVC(kernel="rbf", gamma="scale", C=1.0, decision_function_shape="ovr").fit(Xs, ytr)
        params = {"kernel": "rbf", "gamma": "scale", "C": 1.0, "backend": backend, "features": "standardized"}
    else:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        grid = np.logspace(-4, 1, 6)
        fit, held = holdout_split(ytr, seed=seed)
        acc, unconverged = {}, []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            for C in grid:
                n_before = len(caught)
                m = LinearSVC(C=C, dual="auto", max_iter=2000, random_state=seed).fit(Xs[fit], ytr[fit])
                acc[float(C)] = float((m.predict(Xs[held]) == ytr[held]).mean())
                if len(caught) > n_before:
                    unconverged.append(float(C))
            C = max(acc, key=lambda c: (acc[c], -c))
            clf = LinearSVC(C=C, dual="auto", max_iter=2000, random_state=seed).fit(Xs, ytr)
        params = {"C": C, "C_tried": {f"{c:.3g}": round(a, 5) for c, a in acc.items()},
                  "not_converged_at_C": unconverged, "max_iter": 2000,
                  "selection": f"held-out {HOLDOUT:.0%} of train, stratified, seed {seed}; refit on all of train",
                  "features": "standardized", "backend": "sklearn LinearSVC"}
    classes_ = np.asarray(clf.classes_)

    def predict(q, n_classes):
        d = np.asarray(clf.decision_function(scaler.transform(q)))
        if d.ndim == 1:  # binary: one column, positive = classes_[1]
            d = np.stack([-d, d], axis=1)
        out = np.full((len(q), n_classes), -np.inf)
        out[:, classes_] = d
        return out

    return predict, params, (scaler, clf)


# --------------------------------------------------------------------------------------------- MLP


def mlp_probe(xtr, ytr, n_classes: int, seed: int = 0, hidden: int = 256, lr: float = 1e-3, batch: int = 256,
              max_epochs: int = 200, patience: int = 10):
    """One hidden layer of 256 ReLU, Adam 1e-3, cross-entropy. The epoch count is chosen by early stopping on the
    held-out part of train; the final model is refit on all of train for that many epochs."""
    import torch

    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    Xall = torch.from_numpy(((xtr - mean) / std).astype(np.float32))
    Yall = torch.from_numpy(np.asarray(ytr, np.int64))
    fit, held = holdout_split(ytr, seed=seed)

    def train(idx, epochs, val=None):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(Xall.shape[1], hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(hidden, n_classes))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        best, best_ep, hist = -1.0, 0, []
        for ep in range(1, epochs + 1):
            net.train()
            perm = idx[torch.randperm(len(idx), generator=g).numpy()]
            for s in range(0, len(perm), batch):
                b = perm[s:s + batch]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(Xall[b]), Yall[b]).backward()
                opt.step()
            if val is not None:
                net.eval()
                with torch.no_grad():
                    acc = float((net(Xall[val]).argmax(1) == Yall[val]).float().mean())
                hist.append(acc)
                if acc > best:
                    best, best_ep = acc, ep
                elif ep - best_ep >= patience:
                    break
        return net, best_ep, hist

    _, epochs, hist = train(fit, max_epochs, held)
    net, _, _ = train(np.arange(len(ytr)), max(epochs, 1))
    net.eval()

    def predict(q):
        with torch.no_grad():
            return net(torch.from_numpy(((q - mean) / std).astype(np.float32))).numpy()

    params = {"hidden": hidden, "activation": "relu", "optimizer": f"Adam lr {lr}", "batch_size": batch,
              "epochs": epochs, "max_epochs": max_epochs, "patience": patience, "features": "standardized",
              "selection": f"epochs by early stopping on held-out {HOLDOUT:.0%} of train (seed {seed}); "
                           "refit on all of train", "heldout_accuracy_curve": [round(a, 4) for a in hist]}
    return predict, params, (net, mean, std)
