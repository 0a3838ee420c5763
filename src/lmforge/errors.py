"""lmforge's exceptions and the exit codes the CLI maps them to.

Exit codes (one meaning each, for scripts and CI):
  0  success
  1  the work ran and failed (a training run diverged, an evaluation gate was not met)
  2  a user error: bad config, missing file, impossible setting — nothing was run
"""


class LmforgeError(Exception):
    """Base class; the CLI prints the message without a traceback."""

    exit_code = 1


class UserError(LmforgeError):
    """Something the user can fix: the message says what to change."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override is invalid."""


class DataError(UserError):
    """Input data cannot be used at all (missing file, nothing usable left)."""


class MissingDependency(UserError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs the '{package}' package: pip install 'lmforge[{extra}]'")


class RunFailed(LmforgeError):
    """The work ran but did not succeed."""
