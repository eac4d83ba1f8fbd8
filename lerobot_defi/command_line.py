"""Command lines in LeRobot's dialect (draccus): ``--name=value``, nested fields as ``--a.b=value``, lists as
``--cameras='[static,gripper]'``, booleans as ``--overwrite=true``, ``null`` for None, and ``--config_path=x.yaml``
to read the options from a YAML/JSON file first. ``--help`` lists every option with the comment above its
dataclass field.

:func:`parse_command_line` turns a malformed value, a missing required option or a failed check of the config
(its ``__post_init__``) into one :class:`CommandLineError` whose message is the cause in one line; the commands
print it as ``error: <message>`` and exit with status 2 (:func:`parse_or_exit`). Unknown options stop in argparse
as usual (usage, exit 2). Commands whose options include LeRobot's own (``--policy.path``, ``--policy.type``)
parse with LeRobot's parser instead, with the same errors (:func:`parse_lerobot_command_line`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
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
    return _options_spelled_as_typed(message)


def _options_spelled_as_typed(message: str) -> str:
    """``message`` on one line, with draccus's ```a.b``` option names written ``--a.b``."""
    return re.sub(r"`([\w.]+)`", r"--\1", " ".join(message.split()))


@contextlib.contextmanager
def _stderr_kept_back():
    """Keep back what is written on stderr meanwhile, by Python code (``sys.stderr``) and by logging handlers or
    libraries that write to file descriptor 2; yields a ``StringIO`` that holds it all on exit. A root logging
    handler created meanwhile on ``sys.stderr`` (``logging.warning`` configures one when there is none) is pointed
    back at the real ``sys.stderr``."""
    kept = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        with contextlib.redirect_stderr(kept):
            sys.__stderr__.flush()
            saved_fd = os.dup(2)
            os.dup2(sink.fileno(), 2)
            try:
                yield kept
            finally:
                sys.__stderr__.flush()
                os.dup2(saved_fd, 2)
                os.close(saved_fd)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is kept:
                handler.setStream(sys.stderr)
        sink.seek(0)
        kept.write(sink.read().decode(errors="replace"))


def parse_lerobot_command_line[T](config_class: type[T], argv: Sequence[str], prog: str) -> T:
    """Parse ``argv`` into ``config_class`` with LeRobot's parser (``lerobot.configs.parser.wrap``: plugin
    discovery, ``--config_path`` through the class's ``from_pretrained``, path fields such as ``--policy.path``,
    read from ``sys.argv``), with the errors of :func:`parse_command_line`; a file an option names that does not
    exist is one as well. LeRobot reports an undecodable value itself (``error: ...`` on stderr, exit 1): that
    report becomes the error. What else parsing prints on stderr (warnings) is kept back, and shown on success."""
    from lerobot.configs import parser

    def parsed(cfg):
        return cfg

    parsed.__annotations__ = {"cfg": config_class}  # what parser.wrap reads to know the config class
    saved_argv, sys.argv = sys.argv, [prog, *argv]
    stopped = None
    try:
        with _stderr_kept_back() as printed:
            try:
                cfg = parser.wrap()(parsed)()
            except SystemExit as stop:  # --help, argparse's usage errors, LeRobot's report of a bad value
                stopped = stop
            except (draccus.utils.ParsingError, draccus.utils.DecodingError) as err:
                raise CommandLineError(_one_line(err)) from None
            except FileNotFoundError as err:
                raise CommandLineError(_options_spelled_as_typed(str(err))) from None
    finally:
        sys.argv = saved_argv
    report = printed.getvalue()
    if stopped is not None and stopped.code == 1 and "error: " in report:
        raise CommandLineError(_options_spelled_as_typed(report[report.rindex("error: ") + len("error: ") :]))
    sys.stderr.write(report)
    if stopped is not None:
        raise stopped
    return cfg


def parse_or_exit[T](
    config_class: type[T],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    parse: Callable[[type[T], Sequence[str], str], T] = parse_command_line,
) -> T:
    """``parse`` (:func:`parse_command_line` by default) for commands: on a bad command line print
    ``error: <message>`` on stderr and exit with status 2 (``argv`` defaults to ``sys.argv[1:]``, ``prog`` to the
    script's name)."""
    try:
        return parse(config_class, sys.argv[1:] if argv is None else argv, prog or Path(sys.argv[0]).name)
    except CommandLineError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
