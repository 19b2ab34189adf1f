"""The code a backbone spec runs — `py:` files and modules, torch.hub folders — its identity and sha256, and the gate
through which an index may re-attach it.

An index records `py:models/m.py:make` and the file's sha256. Re-creating that backbone for a query image means
running the file, so a manifest that names code is a request, never an order: the code must hash to what the index
recorded (an edited forward is another embedding space) and this user must have chosen to run exactly that code —
by building with it (`embedsearch index … -b py:…` records it in core/trust.py) or with `--trust-code` on this
command. torch.hub repositories are never downloaded here: only a copy already in the hub cache can be re-attached.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
from dataclasses import dataclass
from pathlib import Path

from embedsearch.core.errors import IndexStateError, UntrustedError
from embedsearch.core.trust import is_trusted_code, trust_code
from embedsearch.models.specs import BackboneSpec, parse_backbone

CODE_KINDS = ("py", "hub")


@dataclass(frozen=True)
class CodeRef:
    """Where a spec's code lives and what it hashes to now (`sha256` None: not found)."""

    identity: str  # py:/abs/m.py:make | py:pkg.mod:make | hub:/abs/dir:entry | hub:owner/repo:entry
    path: Path | None
    sha256: str | None


def tree_sha256(folder: Path) -> str:
    """One hash over every .py file under `folder` (relative name and bytes, sorted): a hub repository's hubconf.py
    imports its neighbours, so all of them are the code that runs."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.py")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def module_file(name: str) -> Path | None:
    """The source file of module `name`, found along sys.path without importing it or its parent packages (an
    import would already run code)."""
    parts, path, spec = name.split("."), None, None
    for i in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:i + 1]), path)
        if spec is None:  # not on sys.path as a file (a builtin, or absent): nothing to hash
            return None
        path = spec.submodule_search_locations
    return Path(spec.origin) if spec is not None and spec.origin and spec.has_location else None


def hub_cache_dir(owner_repo: str) -> Path | None:
    import torch

    owner, repo = owner_repo.split("/")
    hub = Path(torch.hub.get_dir())
    return next((hub / f"{owner}_{repo}_{ref}" for ref in ("main", "master")
                 if (hub / f"{owner}_{repo}_{ref}" / "hubconf.py").is_file()), None)


def code_ref(spec: BackboneSpec, code_path: str | None = None) -> CodeRef | None:
    """The code `spec` would run (None for kinds that run none of the user's code). `code_path`: the absolute path
    an index recorded, used instead of resolving a relative spec against today's working directory."""
    if spec.kind == "py":
        if spec.name.endswith(".py"):
            p = _pinned(spec.name, code_path)
            return CodeRef(f"py:{p}:{spec.entry}", p, _sha(p))
        f = module_file(spec.name)
        return CodeRef(f"py:{spec.name}:{spec.entry}", f, _sha(f) if f else None)
    if spec.kind == "hub":
        if spec.name.startswith((".", "/", "~")) or Path(spec.name).is_dir():
            d = _pinned(spec.name, code_path)
            ok = (d / "hubconf.py").is_file()
            return CodeRef(f"hub:{d}:{spec.entry}", d, tree_sha256(d) if ok else None)
        d = hub_cache_dir(spec.name)
        return CodeRef(f"hub:{spec.name}:{spec.entry}", d, tree_sha256(d) if d else None)
    return None


def _pinned(name: str, code_path: str | None) -> Path:
    """The absolute path of a spec's file or folder: the one the index recorded when it is the spec's own (a relative
    spec names its tail), else the spec resolved here. A recorded path that is not the spec's is ignored."""
    typed = Path(name).expanduser()
    if code_path:
        rec = Path(code_path)
        if rec == typed.absolute() or (not typed.is_absolute() and rec.is_absolute()
                                       and rec.parts[-len(typed.parts):] == typed.parts):
            return rec
    return typed.absolute()


def _sha(p: Path | None) -> str | None:
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest() if p is not None else None
    except OSError:
        return None


def record_user_choice(spec: str, info: dict) -> None:
    """A backbone the user named on their own command line ran: remember its code, at the hash it ran with."""
    s = parse_backbone(spec)
    if s.kind in CODE_KINDS and info.get("code_sha256") and info.get("code_identity"):
        trust_code(info["code_identity"], info["code_sha256"])


def check_reattach(spec: str, recorded: dict, index: str, *, trust: bool = False) -> BackboneSpec:
    """Before an index's own backbone is re-created: refuse code that changed since the build or that this user never
    chose to run; return the spec to create (a relative `py:` file or hub folder pinned to the recorded absolute
    path). `recorded`: the manifest's backbone description. `trust`: the person passed --trust-code (recorded)."""
    s = parse_backbone(spec)
    if s.kind not in CODE_KINDS:
        return s
    ref = code_ref(s, recorded.get("code_path"))
    want = recorded.get("code_sha256")
    where = ref.path or ref.identity
    if ref.sha256 is None:
        how = ("it is not in the torch.hub cache, and an index's repository is never downloaded: run torch.hub.load "
               "yourself once, or build a new index" if s.kind == "hub" and not ref.path else "it is not there")
        raise IndexStateError(f"index {index} was built with code from {where}, and {how}")
    if want is None:
        if not trust:
            raise UntrustedError(f"index {index} names {s.kind}: code ({ref.identity}) with no recorded hash, so it "
                                 "cannot be checked: read the code, then pass --trust-code to run it")
    elif ref.sha256 != want:
        raise IndexStateError(f"{where} changed since index {index} was built (code sha256 {ref.sha256[:12]}, "
                              f"recorded {want[:12]}): its vectors would land in another space; restore the code "
                              "or build a new index")
    if trust:
        trust_code(ref.identity, ref.sha256)
    elif not is_trusted_code(ref.identity, want):
        raise UntrustedError(f"index {index} asks to run {ref.identity} (sha256 {want[:12]}), code you have not run "
                             "on this machine: read it, then pass --trust-code to run it")
    if (s.kind == "py" and s.name.endswith(".py")) or s.kind == "hub":
        return BackboneSpec(s.kind, str(ref.path), entry=s.entry, raw=s.raw)  # pinned, shown as typed
    return s
