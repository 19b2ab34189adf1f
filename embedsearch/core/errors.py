"""The one exception hierarchy: every error a user can cause is an EmbedsearchError with a one-line message."""


class EmbedsearchError(Exception):
    """Base class; the CLI prints `error: <message>` and exits 1."""


class ConfigError(EmbedsearchError):
    """An option or configuration value that is out of range, inconsistent with another, or of the wrong kind."""


class SpecError(EmbedsearchError):
    """A backbone or source spec that cannot be parsed or resolved."""


class SourceError(EmbedsearchError):
    """A dataset, manifest or file that cannot be read as asked."""


class BackboneError(EmbedsearchError):
    """A model that cannot be created, or weights that cannot be loaded."""


class IndexStateError(EmbedsearchError):
    """An index directory that is missing, locked, inconsistent or built differently."""


class QueryError(EmbedsearchError):
    """A query (SQL, --where, -k, vector) that is invalid."""


class EvalError(EmbedsearchError):
    """An evaluation that cannot run on the selected items."""


class UntrustedError(EmbedsearchError):
    """An index asks for code to run or a file to be read that this user never chose (see core/trust.py)."""


def first_line(e: BaseException | str, n: int = 200) -> str:
    """The first line of an exception's message (or of a text), cut to `n` characters: what a one-line error
    quotes of a library's multi-line message. An empty message gives the exception's class name."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else (type(e).__name__ if isinstance(e, BaseException) else "")
    return line[:n]
