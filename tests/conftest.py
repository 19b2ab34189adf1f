import atexit
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network in tests

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_image(path: Path, color, size=(40, 30), seed=0, fmt=None):
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(color)[None, None, :] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format=fmt)
    return path


# One trust file for the whole run (code run and roots indexed by "this user", core/trust.py), never the developer's
# ~/.config/embedsearch/trust.json; shared, because module-scoped fixtures build indexes that later tests query.
# Tests of a second machine point EMBEDSEARCH_TRUST_FILE at a file of their own.
os.environ["EMBEDSEARCH_TRUST_FILE"] = os.path.join(tempfile.mkdtemp(prefix="es-trust-"), "trust.json")

# Nor the developer's model caches or other embedsearch settings: the tests run with empty Hugging Face, torch.hub and
# XDG caches (timm's test_vit/test_resnet need no weights; the offline tests expect none to be cached) and no
# EMBEDSEARCH_* variable but the trust file above. Set once here, before a test module imports huggingface_hub (it
# reads HF_HOME/HF_HUB_CACHE at import), and again for each test by `_hermetic`.
CACHES = {"HF_HOME": "hf", "HF_HUB_CACHE": "hf/hub", "TORCH_HOME": "torch", "XDG_CACHE_HOME": "cache"}
_SESSION_CACHES = Path(tempfile.mkdtemp(prefix="es-caches-"))
_PID = os.getpid()
atexit.register(lambda: os.getpid() == _PID and shutil.rmtree(_SESSION_CACHES, ignore_errors=True))  # not a fork's
_SESSION_VALUES = {name: str(_SESSION_CACHES / sub) for name, sub in CACHES.items()}
for _name in [n for n in os.environ if n.startswith("EMBEDSEARCH_") and n != "EMBEDSEARCH_TRUST_FILE"]:
    del os.environ[_name]
os.environ.update(_SESSION_VALUES)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path_factory):
    """A developer's EMBEDSEARCH_HOME (the README suggests setting it) and other EMBEDSEARCH_* settings must not
    reach the tests (the `index_root` fixture sets its own home), nor their model caches: each test starts with
    empty ones. A test that sets a variable itself wins (it runs after this), and so does a module- or
    session-scoped fixture that pointed a cache elsewhere."""
    for name in [n for n in os.environ if n.startswith("EMBEDSEARCH_") and n != "EMBEDSEARCH_TRUST_FILE"]:
        monkeypatch.delenv(name)
    folder = tmp_path_factory.mktemp("caches")
    for name, sub in CACHES.items():
        if os.environ.get(name) in (None, _SESSION_VALUES[name]):
            monkeypatch.setenv(name, str(folder / sub))


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """root/{train,test}/{red,green,blue}/*.png|jpg — 8 train + 3 test images per class, varied sizes."""
    root = tmp_path / "images"
    k = 0
    for split, n in (("train", 8), ("test", 3)):
        for cls, color in COLORS.items():
            for i in range(n):
                ext = "png" if i % 2 else "jpg"
                make_image(root / split / cls / f"{cls}_{i}.{ext}", color, size=(32 + 4 * i, 28 + 2 * i), seed=k)
                k += 1
    return root


@pytest.fixture
def index_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "indexes"
    monkeypatch.setenv("EMBEDSEARCH_HOME", str(root))
    return root


@pytest.fixture
def tiny_clip_config(tmp_path) -> Path:
    """A tiny open_clip architecture as a config file (spec `open_clip:<path>.json`)."""
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    p = tmp_path / "es-tiny-clip.json"
    p.write_text(json.dumps(cfg))
    return p


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def chromium_page(viewport=(1200, 800)):
    """A page in headless Debian chromium driven by Playwright (no browser download), and the list that collects
    its console errors and uncaught exceptions."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def kill_after_saves(monkeypatch, module, n: int = 2, name: str = "_save"):
    """Make `module.<name>` (a training loop's per-epoch commit) raise KeyboardInterrupt right after its n-th call,
    as a kill between epochs would; returns a function that puts the real one back."""
    real, calls = getattr(module, name), {"n": 0}

    def then_die(*a, **kw):
        calls["n"] += 1
        real(*a, **kw)
        if calls["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(module, name, then_die)
    return lambda: monkeypatch.setattr(module, name, real)
