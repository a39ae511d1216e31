"""User-facing errors. Each carries a one-line message naming the problem and the fix.

The CLI turns these into ``sconify: error: <message>`` on stderr and the exit code below,
never a traceback.
"""

EXIT_OK = 0
EXIT_MISMATCH = 1  # verify/diff: a recomputed figure differs from the recorded one
EXIT_BAD_INPUT = 2  # usage error, bad reference, corrupt or unreadable input
EXIT_ENVIRONMENT = 3  # a required tool or service is not available (e.g. Docker engine)
EXIT_INTERNAL = 70  # a bug in sconify (EX_SOFTWARE); rerun with SCONIFY_DEBUG=1 for a traceback


class SconifyError(Exception):
    """Base class for errors caused by input or environment, not by a bug."""

    exit_code = EXIT_BAD_INPUT


class UsageError(SconifyError):
    """Options or arguments are wrong."""


class ImageError(SconifyError):
    """An image reference cannot be resolved, or an image is corrupt or unsupported."""


class EnvironmentProblem(SconifyError):
    """A required external service or tool is missing (Docker engine, apt-get...)."""

    exit_code = EXIT_ENVIRONMENT


class VerificationFailed(SconifyError):
    """A recomputed figure differs from the recorded one."""

    exit_code = EXIT_MISMATCH
