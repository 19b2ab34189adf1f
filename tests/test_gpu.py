"""GPU seams: CUDA inference in the runner and faiss GPU in index building. Skipped without a GPU."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_embedding_matches_cpu(tmp_path, image_folder):
    from embedsearch.build import BuildConfig, build_index
    from embedsearch.reader import Index
    from embedsearch.sources.datasets import open_source

    src = open_source(str(image_folder))
    for dev, prec in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "auto")):
        build_index(src, BuildConfig.of(name=f"{dev}-{prec}", root=str(tmp_path), backbone="timm:test_vit",
                                     pretrained=False, device=dev, precision=prec, dtype="float32"), progress=False)
    ref = Index.open("cpu-fp32", tmp_path).vectors()
    for name, tol in (("cuda-fp32", 1e-3), ("cuda-auto", 5e-2)):
        v = Index.open(name, tmp_path).vectors()
        cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 1 - tol, name


def test_faiss_gpu_build_matches_cpu():
    from embedsearch.store import faiss_index as vindex

    if vindex.gpu_count() == 0:
        pytest.skip("faiss-cpu installed: no faiss GPU")
    rng = np.random.default_rng(0)
    ids, v = np.arange(2000), rng.normal(size=(2000, 32)).astype(np.float32)
    cpu = vindex.build_index([(ids, v)], 32, "Flat", use_gpu=False)
    gpu = vindex.build_index([(ids, v)], 32, "Flat", use_gpu=True)
    assert (vindex.search(cpu, v[:10], 5)[1] == vindex.search(gpu, v[:10], 5)[1]).all()


def _clustered(n=3000, d=64, C=5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(C, d))
    y = rng.integers(0, C, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_linear_probe_on_cuda_chooses_the_cpu_c_and_predicts_alike():
    from embedsearch.evaluate.methods.linear import linear_probe

    x, y = _clustered()
    pc, params_c, _ = linear_probe(x[:2500], y[:2500], 5, device="cpu")
    pg, params_g, _ = linear_probe(x[:2500], y[:2500], 5, device="cuda")
    assert params_g["device"] == "cuda" and params_g["C"] == params_c["C"]
    assert (pc(x[2500:]).argmax(1) == pg(x[2500:]).argmax(1)).mean() >= 0.99


def test_mlp_probe_trains_on_cuda():
    from embedsearch.evaluate.methods.mlp import mlp_probe

    x, y = _clustered()
    predict, params, _ = mlp_probe(x[:2500], y[:2500], 5)
    assert params["device"] == "cuda" and (predict(x[2500:]).argmax(1) == y[2500:]).mean() > 0.9


def test_knn_on_cuda_gives_the_cpu_neighbour_sets(monkeypatch):
    from embedsearch.query import exact as M_exact

    x, _ = _clustered(4000, 128)
    gpu = M_exact.knn_neighbours(x[:3000], x[3000:], 20, ks=(10, 20))
    monkeypatch.setattr(M_exact, "gpu_bank", lambda bank: None)  # the FAISS CPU path
    cpu = M_exact.knn_neighbours(x[:3000], x[3000:], 20, ks=(10, 20))
    for k in (10, 20):
        assert all(set(a[:k]) == set(b[:k]) for a, b in zip(gpu[1], cpu[1], strict=True))


def test_knn_on_cuda_streams_a_bank_too_large_to_hold_normalized(monkeypatch):
    """A bank over BANK_BYTES is normalized a chunk at a time on the host and uploaded whole to the GPU (an
    ImageNet-sized one is 3.9 GB as float32); the neighbour sets are the CPU's streamed search's."""
    from embedsearch.query import exact as M_exact

    x, _ = _clustered(6000, 96)
    monkeypatch.setattr(M_exact, "BANK_BYTES", 1 << 16)
    monkeypatch.setattr(M_exact, "BANK_CHUNK", 1000)
    monkeypatch.setattr(M_exact, "GPU_SCORE_BYTES", 1 << 20)  # several products per query block
    bank = M_exact.Bank(x[:5000].astype(np.float16))
    assert bank.whole is None
    gpu = M_exact.knn_neighbours(bank, x[5000:], 20, ks=(10, 20))
    assert bank.gpu is not None and bank.gpu.is_cuda
    monkeypatch.setattr(M_exact, "gpu_bank", lambda bank: None)
    cpu = M_exact.knn_neighbours(M_exact.Bank(x[:5000].astype(np.float16)), x[5000:], 20, ks=(10, 20))
    for k in (10, 20):
        assert all(set(a[:k]) == set(b[:k]) for a, b in zip(gpu[1], cpu[1], strict=True))


def test_fewshot_curve_on_cuda_equals_the_cpu_curve(monkeypatch):
    """The few-shot similarities and top-k on the GPU (TF32 off): the same curve as on the CPU."""
    from embedsearch.evaluate.methods import fewshot as M_fs

    x, y = _clustered(6000, 96)
    gpu = M_fs.fewshot_curve(x[:5000], y[:5000], x[5000:], y[5000:], int(y.max()) + 1, 0, 0.07)
    monkeypatch.setattr(M_fs, "gpu_bank", lambda bank: None)
    cpu = M_fs.fewshot_curve(x[:5000], y[:5000], x[5000:], y[5000:], int(y.max()) + 1, 0, 0.07)
    assert gpu == cpu
