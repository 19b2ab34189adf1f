"""MLP probe: one hidden ReLU layer on standardized vectors, its epoch count chosen by early stopping on a held-out
part of train."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedsearch.evaluate.methods.base import Fitted, Method, heldout, register


def mlp_probe(xtr, ytr, n_classes: int, seed: int = 0, hidden: int = 256, lr: float = 1e-3, batch: int = 256,
              max_epochs: int = 200, patience: int = 10):
    """One hidden layer of 256 ReLU, Adam 1e-3, cross-entropy. The epoch count is chosen by early stopping on the
    held-out part of train; the final model is refit on all of train for that many epochs."""
    import torch

    from embedsearch.core import progress
    from embedsearch.core.vectors import standardize

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    Xs, mean, std = standardize(xtr)  # one float32 copy, built a block at a time
    Xall = torch.from_numpy(Xs).to(dev)
    Yall = torch.from_numpy(np.asarray(ytr, np.int64)).to(dev)
    fit, held, split = heldout(ytr, seed, "MLP probe")

    def train(idx, epochs, val=None, desc=""):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(Xall.shape[1], hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(hidden, n_classes)).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        best, best_ep, hist = -1.0, 0, []
        with progress.bar(epochs, desc, unit="epoch") as bar:
            for ep in range(1, epochs + 1):
                net.train()
                perm = torch.from_numpy(idx[torch.randperm(len(idx), generator=g).numpy()]).to(dev)
                for s in range(0, len(perm), batch):
                    b = perm[s:s + batch]
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(net(Xall[b]), Yall[b]).backward()
                    opt.step()
                bar.update()
                if val is not None:
                    net.eval()
                    with torch.no_grad():
                        acc = float((net(Xall[val]).argmax(1) == Yall[val]).float().mean())
                    hist.append(acc)
                    bar.set_postfix_str(f"held-out {acc:.4f} (best {max(best, acc):.4f})")
                    if acc > best:
                        best, best_ep = acc, ep
                    elif ep - best_ep >= patience:
                        break
        return net, best_ep, hist

    _, epochs, hist = train(fit, max_epochs, held, "MLP probe: epochs (early stopping)")
    net, _, _ = train(np.arange(len(ytr)), max(epochs, 1), desc="MLP probe: refit on all of train")
    net = net.cpu().eval()

    def predict(q):
        with torch.no_grad():
            return net(torch.from_numpy(((q - mean) / std).astype(np.float32))).numpy()

    params = {"hidden": hidden, "activation": "relu", "optimizer": f"Adam lr {lr}", "batch_size": batch,
              "epochs": epochs, "max_epochs": max_epochs, "patience": patience, "features": "standardized", "device": dev,
              **split, "epochs_chosen_by": "early stopping on the held-out part",
              "heldout_accuracy_curve": [round(a, 4) for a in hist]}
    return predict, params, (net, mean, std)


@dataclass
class MlpFitted(Fitted):
    """Scored from its weights in float64 (Linear → ReLU → Linear): the same code for eval and a saved probe."""

    state: dict = None  # net.0.weight, net.0.bias, net.2.weight, net.2.bias, mean, std

    def scores(self, x, ids=None):
        t = self.state
        h = ((np.asarray(x, np.float64) - t["mean"]) / t["std"]) @ t["net.0.weight"].T.astype(np.float64)
        h = np.maximum(h + t["net.0.bias"], 0)
        return h @ t["net.2.weight"].T.astype(np.float64) + t["net.2.bias"]

    def tensors(self):
        return self.state


@register
class Mlp(Method):
    name = "mlp"
    order = 50

    def estimate(self, shape, rates, ctx):
        # forward + backward ≈ 6·n·d·hidden FLOPs an epoch at ~1/2 of the GEMM rate (batches of 256); ~20 epochs
        # to the early stop and as many for the refit (easy data stops sooner: 20 s for 50,000 × 2,048 in
        # docs/benchmarks/eval_scale.md)
        return 2 * 20 * 6 * shape.n * shape.d * 256 / (rates.flops / 2)

    def fit(self, train, ctx):
        _, params, (net, mean, std) = mlp_probe(train.x, train.y, train.n_classes, seed=train.seed)
        state = {f"net.{k}": v.numpy() for k, v in net.state_dict().items()} | {"mean": mean, "std": std}
        return [MlpFitted(self.name, f"MLP {params['hidden']} ReLU", params, probabilities=True, state=state)]

    def load(self, t, meta):
        return MlpFitted(self.name, meta.get("variant", ""), meta.get("params", {}), probabilities=True, state=t)

    def shapes(self, t, dim, n_classes):
        h = t["net.0.bias"].shape[0] if "net.0.bias" in t and t["net.0.bias"].ndim == 1 else -1
        return {"net.0.weight": (h, dim), "net.0.bias": (h,), "net.2.weight": (n_classes, h),
                "net.2.bias": (n_classes,), "mean": (dim,), "std": (dim,)}
