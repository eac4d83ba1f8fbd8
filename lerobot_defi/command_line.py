"""Command lines in LeRobot's dialect (draccus): ``--name=value``, nested fields as ``--a.b=value``, lists as
``--cameras='[static,gripper]'``, booleans as ``--overwrite=true``, ``null`` for None, and ``--config_path=x.yaml``
to read the options from a YAML/JSON file first. ``--help`` lists every option with the comment above its
dataclass field.

:func:`parse_command_line` turns a malformed value, a missing required option or a failed check of the config
(its ``__post_init__``) into one :class:`CommandLineError` whose message is the cause in one line; the commands
print it as ``error: <message>`` and exit with status 2. Unknown options stop in argparse as usual (usage, exit 2).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import draccus


class CommandLineError(ValueError):
    """A command line that does not give a valid configuration (the message says which option and why)."""


def parse_command_line[T](config_class: type[T], argv: Sequence[str], prog: str) -> T:
    """Parse ``argv`` (without the program name) into ``config_class`` with draccus."""
    try:
        return draccus.parse(config_class=config_class, args=list(argv), prog=prog)
    except (draccus.utils.ParsingError, draccus.utils.DecodingError) as err:
        raise CommandLineError(_one_line(err)) from None


def _one_line(err: Exception) -> str:
    """The most precise message of a draccus error: the innermost value that could not be decoded (named by its
    option), or the message of the config's own check that draccus wraps as "Couldn't instantiate ..."."""
    message, error = str(err), err
    while True:
        cause = error.__cause__ or error.__context__
        undecodable = isinstance(cause, draccus.utils.DecodingError)
        refused = (  # a config's own check (draccus.utils.DecodingError is a ParsingError as well)
            isinstance(error, draccus.utils.ParsingError)
            and not isinstance(error, draccus.utils.DecodingError)
            and isinstance(cause, (ValueError, TypeError))
        )
        if undecodable or refused:
            message = str(cause)
        if not isinstance(cause, (draccus.utils.ParsingError, draccus.utils.DecodingError)):
            break
        error = cause
    return re.sub(r"`([\w.]+)`", r"--\1", " ".join(message.split()))


def parse_or_exit[T](config_class: type[T], argv: Sequence[str] | None = None, prog: str | None = None) -> T:
    """:func:`parse_command_line` for scripts: on a bad command line print ``error: <message>`` on stderr and exit
    with status 2 (``argv`` defaults to ``sys.argv[1:]``, ``prog`` to the script's name)."""
    try:
        return parse_command_line(
            config_class, sys.argv[1:] if argv is None else argv, prog or Path(sys.argv[0]).name
        )
    except CommandLineError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
