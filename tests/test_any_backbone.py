"""torchvision models, the user's own model class with the checkpoint their training script saved (`py:`), and
features from any layer (`--layer`): stored vectors equal a direct forward of the same model on the same pixels."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from embedsearch.build import BuildConfig, build_index
from embedsearch.cli import cli
from embedsearch.core.errors import BackboneError, SpecError
from embedsearch.models.backbones import create_backbone
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source

USER_MODEL = '''
import torch

class SmallNet(torch.nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

def small_net():
    return SmallNet()

not_a_factory = 3
'''


def _user_net(tmp_path, seed: int):
    """USER_MODEL written to tmp_path/mynet.py and imported as the user's own code would be; small_net() seeded."""
    import importlib.util

    (tmp_path / "mynet.py").write_text(USER_MODEL)
    spec = importlib.util.spec_from_file_location(f"mynet_{seed}", tmp_path / "mynet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(seed)
    return mod.small_net().eval()


def _build(folder, root, backbone, **kw):
    build_index(open_source(str(folder)), BuildConfig.of(name="x", root=str(root), backbone=backbone, dtype="float32",
                precision="fp32", num_workers=0, **kw), progress=False)
    return Index.open("x", root)


def _stored_vs_direct(ix, folder, transform, direct):
    """max |stored − direct forward| over every item, the pixels preprocessed by `transform`."""
    sel = ix.select()
    paths = ix.items_by_id(list(sel["id"]), "id, path")
    x = torch.stack([transform(Image.open(folder / paths[i]["path"]).convert("RGB")) for i in sel["id"]])
    with torch.inference_mode():
        want = direct(x).numpy()
    return float(np.abs(ix.vectors(sel["id"]) - want).max())


def test_torchvision_model_with_a_nested_prefixed_checkpoint_equals_its_direct_forward(tmp_path, image_folder):
    from torchvision.models import get_model, get_model_weights

    torch.manual_seed(1)
    model = get_model("resnet18", weights=None).eval()
    ckpt = {"epoch": 90, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(ckpt, tmp_path / "resnet18.pth")
    ix = _build(image_folder, tmp_path / "ix", "torchvision:resnet18", weights=str(tmp_path / "resnet18.pth"),
                image_size=64)
    assert ix.dim == 512 and "penultimate (input of fc)" in ix.manifest.backbone["pool"]
    transform = get_model_weights("resnet18").DEFAULT.transforms(crop_size=64, resize_size=73)
    feats = torch.nn.Sequential(*list(model.children())[:-1], torch.nn.Flatten())
    assert _stored_vs_direct(ix, image_folder, transform, feats) <= 1e-4
    # and from an intermediate block, average-pooled
    ix = _build(image_folder, tmp_path / "ix-l3", "torchvision:resnet18", weights=str(tmp_path / "resnet18.pth"),
                image_size=64, layer="layer3", pool="avg")
    upto3 = torch.nn.Sequential(*list(model.children())[:7])
    assert ix.dim == 256 and _stored_vs_direct(ix, image_folder, transform, lambda x: upto3(x).mean((2, 3))) <= 1e-4
    assert ix.manifest.space.pool == "avg of layer3 (output)"


def test_py_model_from_a_file_with_the_training_scripts_checkpoint(tmp_path, image_folder):
    from torchvision.transforms import v2

    net = _user_net(tmp_path, seed=3)
    torch.save({"model": {f"_orig_mod.module.{k}": v for k, v in net.state_dict().items()}, "opt": {}},
               tmp_path / "best.pt")
    kw = dict(weights=str(tmp_path / "best.pt"), image_size=24, resize=28, mean="0.5,0.5,0.5", std="0.25,0.25,0.25")
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(28, antialias=True), v2.CenterCrop(24),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])
    ix = _build(image_folder, tmp_path / "ix", f"py:{tmp_path / 'mynet.py'}:small_net", layer="fc:input", **kw)
    direct = lambda x: torch.flatten(net.pool(net.features(x)), 1)  # noqa: E731
    assert ix.dim == 16 and _stored_vs_direct(ix, image_folder, transform, direct) <= 1e-4
    assert len(ix.manifest.backbone["code_sha256"]) == 64
    ix = _build(image_folder, tmp_path / "ix-out", f"py:{tmp_path / 'mynet.py'}:small_net", **kw)
    assert ix.dim == 10 and _stored_vs_direct(ix, image_folder, transform, net) <= 1e-4  # the model's own output


def test_bad_backbones_are_one_line_errors(tmp_path):
    (tmp_path / "mynet.py").write_text(USER_MODEL)
    f = tmp_path / "mynet.py"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(8, 3, 3, 3)}}, tmp_path / "partial.pt")
    cases = [
        (dict(spec="torchvision:resnet18", pretrained=False, layer="layr3"), SpecError, "nearest: layer3"),
        (dict(spec="torchvision:resnt18", pretrained=False), SpecError, "did you mean resnet18"),
        (dict(spec="torchvision:resnet18.IMAGENET9K", pretrained=False), SpecError, "IMAGENET1K_V1"),
        (dict(spec=f"py:{tmp_path / 'nope.py'}:f", pretrained=False), SpecError, "does not exist"),
        (dict(spec=f"py:{f}:not_a_factory", pretrained=False), SpecError, "no callable 'not_a_factory'"),
        (dict(spec=f"py:{f}:small_net", pretrained=False), SpecError, "pass --image-size, --mean, --std"),
        (dict(spec=f"py:{f}:small_net", weights=str(tmp_path / "partial.pt"), image_size=8,
              preprocess={"mean": "0,0,0", "std": "1,1,1"}), BackboneError, r"\d+ missing keys \(features.0.bias"),
        (dict(spec=f"py:{f}:small_net", image_size=8, preprocess={"mean": "0,0,0", "std": "1,1,1"}),
         BackboneError, "gets its weights from --weights"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            create_backbone(kw.pop("spec"), **kw)


def test_layers_command_lists_names_and_shapes():
    r = CliRunner().invoke(cli, ["layers", "torchvision:resnet18", "--random-init", "--json"])
    assert r.exit_code == 0, r.output
    import json

    rows = {d["layer"]: d for d in json.loads(r.stdout)}
    assert rows["layer3"]["output_shape"] == [1, 256, 14, 14] and rows["fc"]["type"] == "Linear"


def _tiny_vit_dir(d):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(5)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                    patch_size=8)
    model = ViTModel(cfg).eval()
    model.save_pretrained(d)
    proc = ViTImageProcessor(size={"height": 32, "width": 32})
    proc.save_pretrained(d)
    return model, proc


def test_hf_model_from_a_local_directory_equals_its_direct_forward(tmp_path, image_folder):
    """A tiny transformers ViT saved with save_pretrained: the default is its pooler output, --pool cls the class
    token, --layer any block; each equals the model's own forward on the processor's pixels."""
    model, proc = _tiny_vit_dir(tmp_path / "vit")
    transform = lambda img: proc(images=img, return_tensors="pt")["pixel_values"][0]  # noqa: E731
    ix = _build(image_folder, tmp_path / "ix", f"hf:{tmp_path / 'vit'}")
    assert ix.dim == 32 and ix.manifest.backbone["model_type"] == "vit"
    assert _stored_vs_direct(ix, image_folder, transform, lambda x: model(pixel_values=x).pooler_output) <= 1e-4
    ix = _build(image_folder, tmp_path / "ix-cls", f"hf:{tmp_path / 'vit'}", pool="cls")
    assert _stored_vs_direct(ix, image_folder, transform,
                             lambda x: model(pixel_values=x).last_hidden_state[:, 0]) <= 1e-4
    names = dict(model.named_modules())
    block = next(n for n in ("encoder.layer.0", "layers.0", "encoder.layers.0") if n in names)  # across versions
    ix = _build(image_folder, tmp_path / "ix-l0", f"hf:{tmp_path / 'vit'}", layer=block, pool="avg")
    direct = lambda x: model(pixel_values=x, output_hidden_states=True).hidden_states[1][:, 1:].mean(1)  # noqa: E731
    assert _stored_vs_direct(ix, image_folder, transform, direct) <= 1e-4


def test_hf_without_the_model_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="no weights for hf:embedsearch-test/none"):
        create_backbone("hf:embedsearch-test/none")


def test_classify_head_gives_the_models_own_labels_and_probabilities(tmp_path, image_folder):
    import json

    from torchvision.models import get_model, get_model_weights

    torch.manual_seed(2)
    model = get_model("resnet18", weights=None).eval()
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    img = next(image_folder.rglob("*.png"))
    r = CliRunner().invoke(cli, ["classify", "--head", "-b", "torchvision:resnet18", "--weights",
                                 str(tmp_path / "r18.pt"), "-k", "3", str(img), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    w = get_model_weights("resnet18").DEFAULT
    with torch.inference_mode():
        p = torch.softmax(model(w.transforms()(Image.open(img).convert("RGB")).unsqueeze(0)), -1)[0]
    top = torch.topk(p, 3)
    assert [x["class_index"] for x in rows] == top.indices.tolist()
    assert [x["label"] for x in rows] == [w.meta["categories"][i] for i in top.indices.tolist()]
    assert np.allclose([x["probability"] for x in rows], top.values.numpy(), atol=1e-5)
    # a transformers classifier saved with its own label names
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                    patch_size=8, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"},
                    label2id={"cat": 0, "dog": 1, "fox": 2})
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vitc")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vitc")
    r = CliRunner().invoke(cli, ["classify", "--head", "-b", f"hf:{tmp_path / 'vitc'}", "-k", "3", str(img), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert sorted(x["label"] for x in got) == ["cat", "dog", "fox"]
    assert abs(sum(x["probability"] for x in got) - 1) < 1e-5
    r = CliRunner().invoke(cli, ["classify", "--head", "-b", "pixels:8", str(img)])
    assert r.exit_code == 1 and "--head needs a timm, torchvision or hf: backbone" in r.output


def test_inspect_page_loads_in_chromium_and_its_attention_is_the_models(tmp_path, image_folder):
    """The page is self-contained (every image a data URI) and loads in headless Chromium without console errors;
    the attention maps equal timm's own (unfused) attention of the last block."""
    import json
    import re
    import shutil
    import subprocess

    img = next(image_folder.rglob("*.png"))
    r = CliRunner().invoke(cli, ["inspect", str(img), "-b", "timm:test_vit", "--random-init", "-o",
                                 str(tmp_path / "v.html"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["layer"].startswith("blocks.") and out["attention_heads"] >= 1 and len(out["channels"]) == 16
    assert all(Image.open(p).size for p in out["pngs"])
    # the same attention, computed by timm itself with its explicit softmax
    from embedsearch.report.inspect import _attention

    bb = create_backbone("timm:test_vit", pretrained=False)
    x = bb.preprocess(Image.open(img).convert("RGB")).unsqueeze(0)
    attn = bb.model.blocks[-1].attn
    attn.fused_attn = False
    got = {}
    attn.attn_drop.register_forward_hook(lambda m, a, o: got.setdefault("w", o.detach()))
    with torch.inference_mode():
        bb.model(x)
    npt = bb.model.num_prefix_tokens
    want = got["w"][0, :, 0, npt:].reshape(attn.num_heads, *bb.model.patch_embed.grid_size).numpy()
    assert np.abs(_attention(bb.model, x) - want).max() < 1e-5
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium (installed by .ci/run)")
    url = (tmp_path / "v.html").as_uri()
    run = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    p = subprocess.run([*run, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-images="(\w+) (\d+)"', p.stdout)
    assert m and m.group(1) == "ok" and int(m.group(2)) == 1 + 16 + out["attention_heads"], m and m.group(0)
    assert not re.search(r"CONSOLE.*(error|Uncaught)", p.stderr, re.I), p.stderr[-2000:]
    shot = tmp_path / "v.png"
    subprocess.run([*run, f"--screenshot={shot}", "--window-size=1000,1200", url], capture_output=True, timeout=120)
    assert shot.stat().st_size > 5_000 and shot.read_bytes()[:4] == b"\x89PNG"


def test_a_ready_module_from_a_notebook_indexes_queries_and_is_checked(tmp_path, image_folder):
    """No file to write: es.build_index(model=, transform=). The vectors equal the module's forward; images can be
    queried once the same module is passed again; another module's weights are refused; repair says plainly that
    only Python can re-embed it."""

    from torchvision.transforms import v2

    import embedsearch as es
    from embedsearch.build.repair import repair
    from embedsearch.core.errors import IndexStateError
    from embedsearch.query.search import search

    net = _user_net(tmp_path, seed=4)
    t = v2.Compose([v2.PILToTensor(), v2.Resize(20, antialias=True), v2.CenterCrop(16),
                    v2.ToDtype(torch.float32, scale=True)])
    es.build_index(str(image_folder), name="nb", root=str(tmp_path / "ix"), model=net, transform=t, layer="fc:input",
                   dtype="float32", precision="fp32", num_workers=0, progress=False)
    ix = es.open_index("nb", tmp_path / "ix")
    assert ix.backbone_spec == "module:SmallNet" and ix.dim == 16
    assert _stored_vs_direct(ix, image_folder, t, lambda x: torch.flatten(net.pool(net.features(x)), 1)) <= 1e-4
    img = next(image_folder.rglob("*.png"))
    with pytest.raises(BackboneError, match="pass it again"):
        search(ix, images=[str(img)], k=1)
    ix = es.open_index("nb", tmp_path / "ix", model=net, transform=t)
    hit = search(ix, images=[str(img)], k=1)[0]
    assert image_folder / hit["path"] == img and hit["score"] > 0.9999
    other = _user_net(tmp_path, seed=5)
    with pytest.raises(IndexStateError, match="weights hash mismatch"):
        es.open_index("nb", tmp_path / "ix", model=other, transform=t)
    ix.close()
    (tmp_path / "ix" / "nb" / "parts" / "part-00000.parquet").unlink()
    with pytest.raises(IndexStateError, match="built from a Python nn.Module.*nothing was changed"):
        repair("nb", tmp_path / "ix", progress=False)


def _tiny_clip_dir(d):
    import json

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    d.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(6)
    cfg = CLIPConfig(text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                      vocab_size=len(vocab), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                      max_position_embeddings=32),
                     vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, image_size=32, patch_size=8), projection_dim=8)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(d)
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    tok.save_pretrained(d)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(d)
    return model, tok, proc


def test_hf_clip_style_model_gives_image_embeddings_and_a_text_tower(tmp_path, image_folder):
    from embedsearch.evaluate import evaluate
    from embedsearch.query.search import query_vectors

    model, tok, proc = _tiny_clip_dir(tmp_path / "clip")

    def feats(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    transform = lambda img: proc(images=img, return_tensors="pt")["pixel_values"][0]  # noqa: E731
    ix = _build(image_folder, tmp_path / "ix", f"hf:{tmp_path / 'clip'}")
    assert ix.dim == 8 and ix.manifest.backbone["text_tower"] is True
    assert _stored_vs_direct(ix, image_folder, transform,
                             lambda x: feats(model.get_image_features(pixel_values=x))) <= 1e-4
    _, q = query_vectors(ix, texts=["red", "a blue"])
    with torch.inference_mode():
        want = feats(model.get_text_features(**tok(["red", "a blue"], padding=True, return_tensors="pt"))).numpy()
    assert np.abs(q - want).max() <= 1e-4
    run = evaluate(ix, methods=["zeroshot"])
    assert run.results[0].data["method"] == "zeroshot" and 0 <= run.results[0].data["metrics"]["top1"] <= 1


def test_a_forward_that_raises_is_one_line_naming_the_spec(tmp_path):
    """Seen with real checkpoints: a py: model whose forward does not take the input size was a traceback."""
    f = tmp_path / "flat.py"
    f.write_text("import torch\n\ndef make():\n    return torch.nn.Linear(10, 3)\n")
    r = CliRunner().invoke(cli, ["layers", f"py:{f}:make", "--random-init", "--image-size", "8", "--mean", "0,0,0",
                                 "--std", "1,1,1"])
    assert r.exit_code == 1 and "the forward pass on a (1, 3, 8, 8) input failed" in r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1
