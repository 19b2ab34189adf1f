"""Linear probe: multinomial logistic regression on the raw vectors, C chosen on a held-out part of train."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedsearch.core import progress
from embedsearch.evaluate.methods.base import Fitted, Method, heldout, register

LINEAR_C_GRID = np.logspace(-6, 5, 45)


def softmax_ce(onehot):
    """Multinomial cross-entropy: z ↦ (mean loss, ∂loss/∂z), the linear probe's loss."""
    import torch

    n = onehot.shape[0]

    def loss_grad(z, rows=slice(None)):  # z: the logits of `rows`; the mean is over all n rows
        t = onehot[rows]
        logp = torch.log_softmax(z, dim=1)
        return -(logp * t).sum() / n, (torch.exp(logp) - t) / n

    return loss_grad


def squared_hinge(targets):
    """One-vs-rest squared hinge, Σ_c max(0, 1 − t_c·z_c)² with t = ±1: LinearSVC's loss."""
    import torch

    n = targets.shape[0]

    def loss_grad(z, rows=slice(None)):  # z: the scores of `rows`; the mean is over all n rows
        t = targets[rows]
        m = torch.clamp(1 - t * z, min=0)
        return (m * m).sum() / n, -2 * t * m / n

    return loss_grad


def fit_logreg(pre, y, n_classes: int, C: float, init=None, max_iter: int = 1000, tol: float = 1e-6,
               block_rows: int | None = None):
    """Multinomial logistic regression with L2 penalty (sklearn's objective C·Σ CE + ½‖W‖², bias unpenalized):
    `fit_l2(... softmax_ce ...)`; see there. Returns raw (W, b) and the iterations used."""
    import torch

    onehot = torch.nn.functional.one_hot(y, n_classes).to(pre.X.dtype)
    h = (1.0 / n_classes) * (1.0 - 1.0 / n_classes)  # the loss's curvature at uniform p
    return fit_l2(pre, softmax_ce(onehot), n_classes, C, h, init, max_iter, tol, block_rows)


def fit_l2(pre, loss_grad, k: int, C: float, h: float, init=None, max_iter: int = 1000, tol: float = 1e-6,
           block_rows: int | None = None):
    """min_W,b  C·Σ_i loss(x_i·W + b) + ½‖W‖² (bias unpenalized) by L-BFGS (torch), preconditioned by the
    features' own covariance; `loss_grad(z)` gives the loss's mean over rows and its gradient in z (n × k).

    The objective is solved divided by C·n. In the eigenbasis Q of the covariance (an orthogonal change of
    variables: ‖QᵀW‖ = ‖W‖, so the objective and its optimum are unchanged; centring is exact because the bias is
    unpenalized) the Hessian is close to diagonal, and with V = s·QᵀW, s² = h·σ² + λ per direction (σ² its
    variance, λ = 1/(C·n), h the loss's typical curvature), close to the identity for every C. L-BFGS then needs
    tens of iterations where correlated features (pixels, token maps) took hundreds to the cap. `init`/returns:
    raw (W, b), and the iterations used. `block_rows`: rows per block of the CPU pass (default FUSED_ROWS)."""
    import torch

    n = pre.X.shape[0]
    lam = 1.0 / (C * n)
    s = torch.sqrt(h * pre.sd_t**2 + lam)                      # per-direction scale of V
    r = (pre.sd_t / s)[:, None]                                # X_pre @ (r·V) = (x − μ) Q (V / s)
    if init is None:
        V = torch.zeros(pre.X.shape[1], k, dtype=pre.X.dtype, device=pre.X.device)
        b = torch.zeros(k, dtype=pre.X.dtype, device=pre.X.device)
    else:
        W0, b0 = init
        V, b = (pre.Q.T @ W0) * s[:, None], b0 + pre.mu_t @ W0
    V, b = V.clone(), b.clone()
    opt = torch.optim.LBFGS([V, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")
    inv_s2 = (1.0 / s**2)[:, None]

    rows = block_rows or FUSED_ROWS
    fused = pre.X.device.type == "cpu" and n > rows
    # MKL's (rows × d)·(d × k) kernel is 3× slower at k = 10 than at k = 16 (measured): on the CPU the product runs
    # with W padded by zero columns to a multiple of 16, whose logits are dropped
    Wp = torch.zeros(V.shape[0], -(-k // 16) * 16, dtype=V.dtype) if fused else None

    def closure():
        # loss and gradient by hand: autograd's backward computes Xᵀ·G with X row-major, 4× slower on CPU than
        # (Gᵀ·X)ᵀ. On the CPU both products are taken a block of rows at a time, while the block is in cache:
        # one pass over X per evaluation instead of two. On a GPU the two whole products are faster.
        with torch.no_grad():
            if fused:
                torch.mul(r, V, out=Wp[:, :k])
                loss = torch.zeros((), dtype=V.dtype)
                G = torch.zeros(k, V.shape[0], dtype=V.dtype)
                gb = torch.zeros(k, dtype=V.dtype)
                for a in range(0, n, rows):
                    Xb = pre.X[a:a + rows]
                    lb, g = loss_grad((Xb @ Wp)[:, :k] + b, slice(a, a + rows))
                    loss += lb
                    G.addmm_(g.T, Xb)
                    gb += g.sum(0)
            else:
                loss, g = loss_grad(pre.X @ (r * V) + b)
                G, gb = g.T @ pre.X, g.sum(0)
            loss = loss + 0.5 * lam * (inv_s2 * V * V).sum()
            V.grad = (r * G.T + lam * inv_s2 * V).contiguous()
            b.grad = gb
        return loss

    opt.step(closure)
    W = pre.Q @ (V / s[:, None])
    iters = int(opt.state[V].get("n_iter", 0))
    return W, b - pre.mu_t @ W, iters


FUSED_ROWS = 512  # rows per block of the CPU loss/gradient pass (a 2,048-d float32 block is 4 MB)
FLOAT64_BUDGET = 2.5e8  # n·d·classes up to which the probe solves in float64 ("where affordable")


class Preconditioned:
    """One fitting set centred and rotated into its covariance's eigenbasis, each direction scaled to unit
    variance (float64 by default, on the probe's device). Built from the stored vectors a block at a time."""

    def __init__(self, x: np.ndarray, device: str, dtype=None, rows: int = 8192):
        import torch

        from embedsearch.core.vectors import column_stats, to_float32

        dtype = dtype or torch.float64
        mu, _ = column_stats(x)
        n, d = x.shape
        cov = torch.zeros(d, d, dtype=torch.float64, device=device)
        mu_d = torch.from_numpy(mu).to(device, dtype)
        for a in range(0, n, rows):  # XᵀX of the centred rows, in the solve's dtype, accumulated in float64
            c = torch.from_numpy(to_float32(x[a:a + rows])).to(device, dtype) - mu_d
            cov += (c.T @ c).double()
        ev, Q = torch.linalg.eigh(cov / max(n, 1))
        sd = ev.clamp(min=0).sqrt()
        # any positive scale is exact; the floor keeps near-constant directions from blowing up in float32
        floor = 1e-3 * float(sd.max()) if float(sd.max()) > 0 else 1.0
        sd = sd.clamp(min=floor)
        self.Q = Q.to(dtype)
        self.sd_t = sd.to(dtype)
        self.mu_t = mu_d
        self.X = torch.empty(n, d, dtype=dtype, device=device)
        for a in range(0, n, rows):
            c = torch.from_numpy(to_float32(x[a:a + rows])).to(device, dtype) - mu_d
            self.X[a:a + rows] = (c @ self.Q) / self.sd_t




def linear_probe(xtr, ytr, n_classes: int, seed: int = 0, grid=LINEAR_C_GRID, device: str | None = None,
                 criterion: str = "accuracy"):
    """C chosen on the held-out 10 % of train over a coarse pass of `grid` refined around the best, then refit on
    all of train. Returns (predict_scores_fn, params, (W, b)) with W, b acting on raw features.

    criterion: what the held-out part maximizes — "accuracy" (the evaluation protocol) or "log_loss" (its negative:
    for callers that use the probabilities, such as label-issue scoring; accuracy is blind to the logits' scale,
    and its ties go to the strongest regularization, whose probabilities are nearly uniform)."""
    import torch

    from embedsearch.core.vectors import to_float32

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # float64 where affordable; above the budget float32 is ~4× faster per step and, measured on 50k×384×100,
    # reaches the same accuracy in a fraction of the iterations
    dtype = torch.float64 if len(xtr) * xtr.shape[1] * n_classes <= FLOAT64_BUDGET else torch.float32
    fit, held, split = heldout(ytr, seed, "linear probe")
    pre = Preconditioned(xtr[fit], dev, dtype)
    Y = torch.from_numpy(np.asarray(ytr, np.int64)).to(dev)
    x_held = torch.from_numpy(to_float32(xtr[held])).to(dev, dtype)
    y_held = Y[held]
    tried: dict[int, float] = {}
    iters: dict[int, int] = {}
    coarse = list(range(0, len(grid), 4))
    if coarse[-1] != len(grid) - 1:
        coarse.append(len(grid) - 1)
    bar = progress.bar(len(coarse) + 5, "linear probe: C sweep", unit="C")

    def score(i, init=None):
        W, b, iters[i] = fit_logreg(pre, Y[fit], n_classes, float(grid[i]), init)
        z = x_held @ W + b
        if criterion == "log_loss":
            tried[i] = -float(torch.nn.functional.cross_entropy(z.double(), y_held))
        else:
            tried[i] = float((z.argmax(1) == y_held).double().mean())
        bar.update()
        bar.set_postfix_str(f"C={grid[i]:.3g} held-out {tried[i]:.4f} ({iters[i]} it)")
        return W, b

    with bar:
        init, worse = None, 0
        for i in coarse:  # increasing C: warm start from the more regularized solution (the problem is convex)
            init = score(i, init)
            worse = worse + 1 if tried[i] < max(tried.values()) else 0
            if worse == 3:  # held-out accuracy fell for 3 coarse steps (3 decades): larger C only overfits more
                break
        best = max(tried, key=lambda i: (tried[i], -i))
        refine = [i for i in range(max(0, best - 2), min(len(grid), best + 3)) if i not in tried]
        bar.total = len(tried) + len(refine) + 1
        for i in refine:
            score(i)
        best = max(tried, key=lambda i: (tried[i], -i))  # ties: the stronger regularization
        C = float(grid[best])
        bar.set_postfix_str(f"refit on all of train at C={C:.3g}")
        W, b, refit_iters = fit_logreg(Preconditioned(xtr, dev, dtype), Y, n_classes, C)
        bar.update()
    W, b = W.cpu().double().numpy(), b.cpu().double().numpy()

    def predict(q):
        return np.asarray(q, np.float64) @ W + b

    params = {"C": C, "C_grid": "10^linspace(-6, 5, 45): every 4th value (stopping after 3 steps of falling held-out "
                                "accuracy), then ±2 grid steps around the best",
              "C_tried": {f"{grid[i]:.3g}": round(a, 5) for i, a in sorted(tried.items())},
              "C_criterion": "held-out accuracy" if criterion == "accuracy" else "held-out log-loss (negated)",
              **split,
              "iterations": {f"{grid[i]:.3g}": n for i, n in sorted(iters.items())} | {"refit": refit_iters},
              "features": "raw (unnormalized); solved in the covariance's eigenbasis, each direction scaled "
                          "(an orthogonal change of variables with the same optimum)",
              "solver": f"L-BFGS (torch, {str(dtype).removeprefix('torch.')}), strong Wolfe, max_iter 1000, "
                        "gradient tolerance 1e-6, warm-started along the coarse grid",
              "dtype": str(dtype).removeprefix("torch."),
              "penalty": "L2, C·ΣCE + ½‖W‖² (sklearn's objective)", "device": dev}
    return predict, params, (W, b)


@dataclass
class LinearFitted(Fitted):
    W: np.ndarray = None
    b: np.ndarray = None

    def scores(self, x, ids=None):
        return np.asarray(x, np.float64) @ self.W + self.b

    def tensors(self):
        return {"W": self.W, "b": self.b}


@register
class Linear(Method):
    name = "linear"
    order = 30

    def estimate(self, shape, rates, ctx):
        # ~60 L-BFGS evaluations per C over ~16 values of C and the refit (measured: 2–20 iterations at small C,
        # hundreds to the cap of 1,000 at large C on digits), each two passes over the preconditioned rows or
        # their 4·n·d·C FLOPs, whichever is slower, at ~1/3 of the measured rates, plus ~1.5 ms of fixed cost
        # (docs/benchmarks/eval_scale.md); two covariances and eigenbases
        n, d, C = shape.n, shape.d, shape.C
        item = 8 if n * d * C <= FLOAT64_BUDGET else 4
        per_eval = 3 * max(2 * n * d * item / rates.bandwidth, 4 * n * d * C / rates.flops) + 1.5e-3
        return 2 * (2 * n * d * d + 10 * d ** 3) / rates.flops + 16 * 60 * per_eval

    def fit(self, train, ctx):
        _, params, (W, b) = linear_probe(train.x, train.y, train.n_classes, seed=train.seed)
        return [LinearFitted(self.name, "logistic regression (L-BFGS)", params, probabilities=True, W=W, b=b)]

    def load(self, t, meta):
        return LinearFitted(self.name, meta.get("variant", ""), meta.get("params", {}), probabilities=True,
                            W=t["W"], b=t["b"])

    def shapes(self, t, dim, n_classes):
        return {"W": (dim, n_classes), "b": (n_classes,)}
