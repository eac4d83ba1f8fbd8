"""``python -m lerobot_defi.envs.check_calvin_install``: the check of the CALVIN simulator install (the only one;
the README, the docs and the install hint of ``calvin_simulator`` name it).

It builds the simulator exactly as the evaluation does (finding ``calvin_env`` the way the evaluation does, from
the current directory: run it from the project folder), resets it and asks the task oracle once, then prints one
line. PyBullet's and calvin_env's own start-up chatter is kept out of the way and shown only if the check fails.
Options in LeRobot's dialect (``lerobot_defi.command_line``): ``--renderer=auto|egl|tiny``.
"""

import contextlib
import gc
import os
import sys
import tempfile
from dataclasses import dataclass

from lerobot_defi.command_line import CommandLineError, parse_command_line
from lerobot_defi.envs.calvin_simulator import (
    INSTALL_CHECK_COMMAND,
    RENDERERS,
    CalvinEnvNotInstalledError,
    check_installation,
)

PROG = INSTALL_CHECK_COMMAND


@dataclass
class CheckCalvinInstallConfig:
    """Check the CALVIN simulator install: build it once, reset it, ask the task oracle.
    Example: python -m lerobot_defi.envs.check_calvin_install --renderer=tiny"""

    # "auto" (PyBullet's EGL renderer whenever an EGL library is found, else TinyRenderer), "egl" or "tiny".
    renderer: str = "auto"

    def __post_init__(self):
        if self.renderer not in RENDERERS:
            raise ValueError(f"--renderer must be one of {list(RENDERERS)}, got {self.renderer!r}")


@contextlib.contextmanager
def _output_captured():
    """Send what C libraries and Python print to fds 1 and 2 into a temporary file; yields that file."""
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_command_line(CheckCalvinInstallConfig, argv, prog=PROG)
    except CommandLineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with _output_captured() as output:
        try:
            line, error = check_installation(args.renderer), None
        except (CalvinEnvNotInstalledError, FileNotFoundError, RuntimeError) as caught:
            line, error = None, caught
        gc.collect()  # the simulator's __del__ prints too
        output.seek(0)
        chatter = output.read().decode(errors="replace")
    if error is not None:
        if not isinstance(error, CalvinEnvNotInstalledError) and chatter.strip():
            print(chatter.rstrip(), file=sys.stderr)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
