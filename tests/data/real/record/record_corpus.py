"""Record the reference outputs of the real-checkpoint corpus with each source repository's OWN model code.

This script contains no model code of its own and no code copied from those repositories: for every artifact it
reads the model definition from the fetched snapshot (a directory given with --corpus, laid out as
CORPUS/<owner>+<repo>/<path in repo>), builds the model exactly as that repository's README / eval notebook / eval
script does, loads the committed checkpoint the way that repository loads it, preprocesses the corpus images with
that repository's eval transform, and saves

    <artifact>/features.npy   float32 [n_images, D]  the input of the final linear layer (a forward hook)
    <artifact>/logits.npy     float32 [n_images, C]  the model output
    <artifact>/record.json    image order, preprocessing, layer, torch / torchvision versions, load notes

Definitions that live in notebooks or in scripts that train at import time are taken from the snapshot file with
`ast`: only the named class / function definitions and that file's own imports of torch / torchvision /
pytorch_lightning / torchmetrics / pkg_resources are executed. Nothing is downloaded.

Usage (see ../README.md for the fetch commands and commits):

    python record_corpus.py --corpus /tmp/corpus --out tests/data/real [--only NAME ...]

Needs torch, torchvision, numpy, pillow; pytorch_lightning + torchmetrics (+ setuptools<81 for pkg_resources) for
the two Lightning artifacts (mlbook_lightning_mlp_mnist, azureml_mnist_mlp).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

CIFAR_IMAGES = ["cifar10_00_3.png", "cifar10_01_8.png", "cifar10_03_0.png", "cifar10_06_1.png"]
MNIST_IMAGES = ["mnist_00_7.png", "mnist_01_2.png", "mnist_02_1.png", "mnist_03_0.png"]
ALLOWED_IMPORT_ROOTS = {"torch", "torchvision", "pytorch_lightning", "torchmetrics", "pkg_resources"}


# ------------------------------------------------------------------------------------------------ snapshot helpers


def _source(path: Path) -> str:
    """Python source of a .py file, or the code cells of a notebook (IPython magics dropped)."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text())
        cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        lines = [ln for cell in cells for ln in cell.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        return "\n".join(lines)
    return path.read_text()


def defs_from(path: Path, names: list[str], extra: dict | None = None) -> dict:
    """Execute only `names` (top-level classes / functions) of the snapshot file, with its allowed imports."""
    tree = ast.parse(_source(path), filename=str(path))
    keep, found = [], set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if all(m.split(".")[0] in ALLOWED_IMPORT_ROOTS for m in mods):
                keep.append(node)
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in names:
            keep.append(node)
            found.add(node.name)
    missing = set(names) - found
    if missing:
        raise SystemExit(f"{path}: definitions not found: {sorted(missing)}")
    ns: dict = {"__name__": f"snapshot_{path.stem}"}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), ns)  # noqa: S102 — the snapshot's code
    ns.update(extra or {})
    return ns


def import_file(path: Path, name: str):
    """Import a snapshot module file as-is (its directory on sys.path for sibling imports)."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.pop(0)


# ------------------------------------------------------------------------------------------------ the artifacts
# Each builder returns (model in eval mode, list of input tensors [1, C, H, W], the final nn.Linear, notes).


def _pil(images_dir: Path, names: list[str]):
    return [Image.open(images_dir / n) for n in names]


def akamaster(depth: int):
    def build(corpus: Path, weights: Path, images_dir: Path):
        snap = corpus / "akamaster+pytorch_resnet_cifar10"
        resnet = import_file(snap / "resnet.py", "akamaster_resnet")
        # trainer.py: model = torch.nn.DataParallel(resnet.__dict__[args.arch]()); checkpoint = torch.load(resume);
        # model.load_state_dict(checkpoint['state_dict'])  (map_location added: the file holds CUDA storages)
        model = torch.nn.DataParallel(resnet.__dict__[f"resnet{depth}"]())
        ckpt = torch.load(weights, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        # trainer.py val_loader: ToTensor + Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        t = transforms.Compose([transforms.ToTensor(),
                                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
        xs = [t(im.convert("RGB")).unsqueeze(0) for im in _pil(images_dir, CIFAR_IMAGES)]
        return model, xs, model.module.linear, {
            "load": f"torch.nn.DataParallel(resnet.resnet{depth}()).load_state_dict(torch.load(f)['state_dict']) "
                    "(trainer.py), map_location='cpu'",
            "definition": "resnet.py (module import)",
        }
    return build


def udacity_cifar_cnn(corpus: Path, weights: Path, images_dir: Path):
    snap = corpus / "udacity+deep-learning-v2-pytorch"
    ns = defs_from(snap / "convolutional-neural-networks/cifar-cnn/cifar10_cnn_solution.ipynb", ["Net"])
    model = ns["Net"]()
    # notebook: model.load_state_dict(torch.load('model_cifar.pt'))  (map_location: saved from CUDA)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    # notebook test_transform: ToTensor + Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    xs = [t(im.convert("RGB")).unsqueeze(0) for im in _pil(images_dir, CIFAR_IMAGES)]
    return model, xs, model.fc2, {"load": "Net().load_state_dict(torch.load(f)) (cifar10_cnn_solution.ipynb), "
                                          "map_location='cpu'",
                                  "definition": "class Net from cifar10_cnn_solution.ipynb"}


def captum_cifar_net(corpus: Path, weights: Path, images_dir: Path):
    snap = corpus / "pytorch+captum"
    ns = defs_from(snap / "captum/insights/attr_vis/example.py", ["Net"])
    net = ns["Net"]()
    # example.py get_pretrained_model(): net.load_state_dict(torch.load(pt_path))
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    net.eval()
    # tutorials/CIFAR_TorchVision_Interpret.ipynb (and example.py's input_transforms): ToTensor + Normalize(0.5, 0.5)
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    xs = [t(im.convert("RGB")).unsqueeze(0) for im in _pil(images_dir, CIFAR_IMAGES)]
    return net, xs, net.fc3, {"load": "Net().load_state_dict(torch.load(f)) (captum/insights/attr_vis/example.py)",
                              "definition": "class Net from captum/insights/attr_vis/example.py"}


def stat453_lenet5_mnist(corpus: Path, weights: Path, images_dir: Path):
    snap = corpus / "rasbt+stat453-deep-learning-ss21"
    ns = defs_from(snap / "L13/code/save-and-load/2-lenet5-load.ipynb", ["LeNet5"])
    model = ns["LeNet5"](grayscale=True, num_classes=10)
    # 2-lenet5-load.ipynb: model.load_state_dict(torch.load('saved_data/model.pt'))
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    # resize_transform: Resize((32, 32)) + ToTensor + Normalize((0.5,), (0.5,)) on the MNIST PIL image (mode L)
    t = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    xs = [t(im).unsqueeze(0) for im in _pil(images_dir, MNIST_IMAGES)]
    return model, xs, model.classifier[4], {
        "load": "LeNet5(grayscale=True, num_classes=10).load_state_dict(torch.load(f)) (2-lenet5-load.ipynb)",
        "definition": "class LeNet5 from L13/code/save-and-load/2-lenet5-load.ipynb"}


def mlbook_lightning_mlp_mnist(corpus: Path, weights: Path, images_dir: Path):
    from packaging.version import Version

    snap = corpus / "rasbt+machine-learning-book"
    ns = defs_from(snap / "ch13/ch13_part3_lightning.py", ["MultiLayerPerceptron"])
    # the book compares parse_version(torchmetrics_version) > parse_version(0.8): a float, which today's packaging
    # rejects; the same comparison with the string (it only picks the Accuracy() constructor, no weights)
    ns["MultiLayerPerceptron"].__init__.__globals__["parse_version"] = lambda v: Version(str(v))
    # ch13_part3_lightning.py: model = MultiLayerPerceptron.load_from_checkpoint(path)
    model = ns["MultiLayerPerceptron"].load_from_checkpoint(str(weights), map_location="cpu")
    model.eval()
    # MnistDataModule: transforms.Compose([transforms.ToTensor()])
    t = transforms.Compose([transforms.ToTensor()])
    xs = [t(im).unsqueeze(0) for im in _pil(images_dir, MNIST_IMAGES)]
    return model, xs, model.model[5], {
        "load": "MultiLayerPerceptron.load_from_checkpoint(path) (ch13_part3_lightning.py), map_location='cpu'; "
                "parse_version given str(0.8) (today's packaging rejects a float)",
        "definition": "class MultiLayerPerceptron from ch13/ch13_part3_lightning.py",
        "pytorch_lightning": __import__("pytorch_lightning").__version__,
        "torchmetrics": __import__("torchmetrics").__version__}


def mrdbourke_tinyvgg(corpus: Path, weights: Path, images_dir: Path):
    snap = corpus / "mrdbourke+pytorch-deep-learning"
    model_builder = import_file(snap / "going_modular/going_modular/model_builder.py", "mrdbourke_model_builder")
    # train.py: TinyVGG(input_shape=3, hidden_units=HIDDEN_UNITS=10, output_shape=len(class_names)=3)
    model = model_builder.TinyVGG(input_shape=3, hidden_units=10, output_shape=3)
    # 05_pytorch_going_modular_script_mode.ipynb / predictions: model.load_state_dict(torch.load(f))
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    # train.py data_transform: Resize((64, 64)) + ToTensor
    t = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])
    xs = [t(im.convert("RGB")).unsqueeze(0) for im in _pil(images_dir, CIFAR_IMAGES)]
    return model, xs, model.classifier[1], {
        "load": "TinyVGG(3, 10, 3).load_state_dict(torch.load(f)) (going_modular), map_location='cpu'",
        "definition": "going_modular/going_modular/model_builder.py (module import)"}


def azureml_mnist_mlp(corpus: Path, weights: Path, images_dir: Path):
    snap = corpus / "Azure+azureml-examples"
    code = snap / "cli/endpoints/batch/deploy-models/mnist-classifier/deployment-torch/code"
    mc = import_file(code / "mnist_classifier.py", "mnist_classifier")
    # batch_driver.py init(): model = MnistClassifier(); model.load_state_dict(torch.load(model_file)); model.eval()
    model = mc.MnistClassifier()
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    # batch_driver.py run(): image_data = torchvision.io.read_image(image_path).float(); expand(1, -1, -1, -1)
    xs = [torchvision.io.read_image(str(images_dir / n)).float().expand(1, -1, -1, -1) for n in MNIST_IMAGES]
    return model, xs, model.out, {
        "load": "MnistClassifier().load_state_dict(torch.load(model_file)) (batch_driver.py)",
        "definition": "deployment-torch/code/mnist_classifier.py (module import)"}


def opacus_fork_convnet(corpus: Path, weights: Path, images_dir: Path):
    snap = corpus / "rayhanul+opacus"
    ns = defs_from(snap / "examples/cifar10.py", ["convnet"])
    model = ns["convnet"](num_classes=10)
    # examples/cifar10.py saves {"epoch", "arch": "Convnet", "state_dict": model.state_dict(), "best_acc1",
    # "optimizer"} from the GradSampleModule that PrivacyEngine.make_private wraps around convnet(): its keys
    # carry "_module."; the script has no load path, so: the nested state dict, that prefix removed
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    sd = {k.removeprefix("_module."): v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(sd)
    model.eval()
    # examples/cifar10.py test_transform: ToTensor + Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    t = transforms.Compose([transforms.ToTensor(),
                            transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))])
    xs = [t(im.convert("RGB")).unsqueeze(0) for im in _pil(images_dir, CIFAR_IMAGES)]
    return model, xs, model[13], {
        "load": "convnet(10).load_state_dict({k.removeprefix('_module.'): v for k, v in "
                "torch.load(f, weights_only=False)['state_dict'].items()})",
        "definition": "def convnet from examples/cifar10.py"}


ARTIFACTS = {
    "akamaster_resnet20": (akamaster(20), "resnet20-12fca82f.th", CIFAR_IMAGES),
    "akamaster_resnet56": (akamaster(56), "resnet56-4bfd9763.th", CIFAR_IMAGES),
    "udacity_cifar_cnn": (udacity_cifar_cnn, "model_cifar.pt", CIFAR_IMAGES),
    "captum_cifar_net": (captum_cifar_net, "cifar_torchvision.pt", CIFAR_IMAGES),
    "stat453_lenet5_mnist": (stat453_lenet5_mnist, "model.pt", MNIST_IMAGES),
    "mlbook_lightning_mlp_mnist": (mlbook_lightning_mlp_mnist, "epoch=17-step=15479.ckpt", MNIST_IMAGES),
    "mrdbourke_tinyvgg": (mrdbourke_tinyvgg, "05_going_modular_script_mode_tinyvgg_model.pth", CIFAR_IMAGES),
    "azureml_mnist_mlp": (azureml_mnist_mlp, "model.pt", MNIST_IMAGES),
    "opacus_fork_convnet": (opacus_fork_convnet, "model_best.pth.tar", CIFAR_IMAGES),
}


def record(name: str, corpus: Path, out: Path) -> None:
    build, wname, images = ARTIFACTS[name]
    d = out / name
    model, xs, head, notes = build(corpus, d / wname, out / "images")
    feats, logits = [], []
    captured = []
    h = head.register_forward_hook(lambda m, inp, outp: captured.append(inp[0].detach().clone()))
    with torch.no_grad():
        for x in xs:  # one image at a time, as the repositories' single-image paths do
            captured.clear()
            y = model(x)
            feats.append(captured[0].reshape(1, -1))
            logits.append(y.reshape(1, -1))
    h.remove()
    f = torch.cat(feats).float().numpy()
    lg = torch.cat(logits).float().numpy()
    # the hook is on the head: its output must be the model output (nothing after the last linear layer)
    np.save(d / "features.npy", f.astype(np.float32))
    np.save(d / "logits.npy", lg.astype(np.float32))
    rec = {"artifact": name, "images": images, "features_shape": list(f.shape), "logits_shape": list(lg.shape),
           "argmax": lg.argmax(1).tolist(), "input_shape": list(xs[0].shape),
           "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
           **notes}
    (d / "record.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{name}: features {f.shape} logits {lg.shape} argmax {rec['argmax']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, type=Path, help="directory with <owner>+<repo>/ snapshot extracts")
    ap.add_argument("--out", required=True, type=Path, help="tests/data/real")
    ap.add_argument("--only", nargs="*", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for name in a.only or ARTIFACTS:
        record(name, a.corpus, a.out)


if __name__ == "__main__":
    main()
