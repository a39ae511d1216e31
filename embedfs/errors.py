"""Errors raised by embedfs. Every message is one line that names the problem and the fix."""


class EmbedfsError(Exception):
    """Base class: a user-facing, one-line error."""


class NotELFError(EmbedfsError):
    """The input is not an ELF executable we can inject into or measure."""


class FormatError(EmbedfsError):
    """An embedfs archive or descriptor is malformed, truncated or of an unknown version."""


class IntegrityError(EmbedfsError):
    """Content does not match its recorded hash.

    ``path`` names the archive member (None for index-level checks) and ``check`` names what
    failed, e.g. "file sha256", "root hash", "index".
    """

    def __init__(self, message: str, *, path: str | None = None, check: str = ""):
        super().__init__(message)
        self.path = path
        self.check = check


class KeyRequiredError(EmbedfsError):
    """An encrypted member was read without the code key that decrypts it."""


class InputError(EmbedfsError):
    """An argument is unusable: a bad member path or entry, a missing file, an unknown member."""


class AlreadyEmbeddedError(EmbedfsError):
    """The executable already carries an embedfs archive (pass replace=True / --replace)."""
