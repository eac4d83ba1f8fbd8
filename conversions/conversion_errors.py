"""The errors every ``lerobot-defi-convert`` command shares: bad input (stops a run, exit status 2) and episodes
skipped by design."""

import sys

# Exit status of every lerobot-defi-convert command stopped by bad input (usage errors are 2 as well).
BAD_INPUT_EXIT_CODE = 2


class ConversionInputError(ValueError):
    """Bad input that stops a conversion (re-run with --skip_bad=true to skip such episodes)."""


def report_bad_input(error: BaseException) -> int:
    """Print ``error: <message>`` on its own line of stderr; return ``BAD_INPUT_EXIT_CODE`` (for a ``main``)."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    return BAD_INPUT_EXIT_CODE


class SkipEpisode(Exception):
    """Raised by a converter's ``read_episode`` for a valid source episode it does not convert by design
    (e.g. an OXE episode without language); always skipped and listed in ``ConversionReport.skipped``."""
