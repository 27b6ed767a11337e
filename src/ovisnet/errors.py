"""Expected user errors: situations fixed by changing a command line, a setting or a path.

The entry points (``python -m ovisnet.train``, ``python -m ovisnet.eval``) report them as one
line, ``<prog>: <message>``, on stderr and exit with :data:`EXIT_STATUS`, without a traceback;
every other exception keeps its traceback. A message names the fix.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_STATUS = 2  # as argparse: the command line asked for something this machine cannot do


class UserError(Exception):
    """An expected situation whose message (one line) names the fix."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work (still a ``ValueError`` for callers of the Python API)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the run needs is not there (still a ``FileNotFoundError``)."""


def find_user_error(exc: BaseException) -> UserError | None:
    """``exc`` itself or the :class:`UserError` it wraps.

    Hydra's ``instantiate`` chains the original error as ``__cause__``, OmegaConf's resolvers as
    ``__context__``; both chains are followed.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def report_user_errors(prog: str) -> Iterator[None]:
    """Turn a :class:`UserError` raised inside the block into ``prog: message`` and an exit.

    Raises:
        SystemExit: with :data:`EXIT_STATUS` after printing the message (a ``BaseException``:
            Hydra's job runner lets it through instead of printing its own report).
    """
    try:
        yield
    except Exception as exc:
        error = find_user_error(exc)
        if error is None:
            raise
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STATUS) from None
