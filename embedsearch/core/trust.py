"""What this machine's user has trusted: code they ran and image roots they indexed, kept outside every index.

An index is data someone may hand you. Its manifest names a backbone (`py:FILE:FACTORY`, `hub:…`) and a source root,
and nothing it names may run or be read just because it says so. What the person named on their own command line is
different: `embedsearch index ./flowers -b py:models/m.py:make` ran that file by their choice. Those choices land
here, in a small JSON file in the user's config folder (never in an index folder), so that later commands can tell
"code this user already ran, with this exact sha256" from "code an index asks us to run".

- code: identity (e.g. `py:/abs/models/m.py:make`, `hub:/abs/dir:entry`) → the sha256s the user ran it at.
- roots: image roots (folders, manifest roots, webdataset shard folders) the user indexed from; the server serves
  thumbnails from these and from the roots given to `serve --image-root`, never from a root an index names.

`EMBEDSEARCH_TRUST_FILE` moves the file (tests point it at a temporary folder); the default is
`$XDG_CONFIG_HOME/embedsearch/trust.json` (`~/.config/embedsearch/trust.json`).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from embedsearch.core.errors import EmbedsearchError

FORMAT = 1


def trust_file() -> Path:
    env = os.environ.get("EMBEDSEARCH_TRUST_FILE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "embedsearch" / "trust.json"


def _read(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return {"format": FORMAT, "code": {}, "roots": []}
    except (OSError, ValueError) as e:
        raise EmbedsearchError(f"cannot read the trust file {path} ({e}): fix or remove it") from None
    if not isinstance(d, dict) or not isinstance(d.get("code", {}), dict) or not isinstance(d.get("roots", []), list):
        raise EmbedsearchError(f"the trust file {path} is not in the expected format: fix or remove it")
    d.setdefault("code", {})
    d.setdefault("roots", [])
    return d


@contextmanager
def _locked():
    """The trust file, read under an exclusive lock and written back atomically (two builds at once both land)."""
    path = trust_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        d = _read(path)
        yield d
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(d, indent=1, sort_keys=True))
        os.replace(tmp, path)


def trust_code(identity: str, sha256: str) -> None:
    """Record that the user ran `identity` at `sha256` by their own choice."""
    with _locked() as d:
        shas = d["code"].setdefault(identity, [])
        if sha256 not in shas:
            shas.append(sha256)


def is_trusted_code(identity: str, sha256: str) -> bool:
    return sha256 in _read(trust_file())["code"].get(identity, [])


def _norm(path: str | os.PathLike) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))


def trust_root(path: str | os.PathLike) -> None:
    """Record an image root the user indexed from."""
    p = _norm(path)
    with _locked() as d:
        if p not in d["roots"]:
            d["roots"].append(p)


def trusted_roots() -> list[str]:
    return list(_read(trust_file())["roots"])


def within(path: str | os.PathLike, roots) -> bool:
    """Whether `path` lies lexically inside one of `roots` (no `..` can climb out: both sides are normalised).
    Symlinks inside a root are the user's own (an ImageNet folder of links to shared storage), so they are not
    resolved here: what this guards against is an index naming a path or root the user never chose."""
    p = _norm(path)
    for r in roots:
        r = _norm(r)
        if p == r or p.startswith(r.rstrip(os.sep) + os.sep):
            return True
    return False
