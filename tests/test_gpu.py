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
        build_index(src, BuildConfig(name=f"{dev}-{prec}", root=str(tmp_path), backbone="timm:test_vit",
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
