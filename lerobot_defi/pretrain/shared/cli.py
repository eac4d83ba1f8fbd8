"""Command lines of the pretraining entry points, parsed the way ``lerobot-train`` parses its own.

``parse_config(config_class, argv)`` runs LeRobot's ``lerobot.configs.parser.wrap`` (draccus underneath: plugin
discovery, ``--help``, ``--config_path``) on ``argv``, through ``lerobot_defi.command_line``: a bad value is one
``CommandLineError``, which the commands print as one ``error:`` line before exiting with status 2.
``--config_path`` reaches the config class's ``from_pretrained`` as it reaches
``TrainPipelineConfig.from_pretrained`` in ``lerobot-train``; the trainers' configs take it from
:class:`PresetConfig`: a YAML/JSON file, or the name of a preset shipped in
``lerobot_defi.presets`` (``--config_path=gfdm_tiny.yaml``). Two spellings are accepted on top of LeRobot's
(the README documents them): dashes in flag names (``--output-dir=...``) and bare boolean flags
(``--push-to-hub``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import draccus

from lerobot_defi.command_line import parse_lerobot_command_line


def normalise_cli_args(argv: Sequence[str]) -> list[str]:
    """``--push-to-hub`` -> ``--push_to_hub=true``; ``--a-b=x`` -> ``--a_b=x`` (values and ``--help`` untouched)."""
    out: list[str] = []
    argv = list(argv)
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg == "--help":
            out.append(arg)
            continue
        name, sep, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        bare = not sep and (i + 1 == len(argv) or argv[i + 1].startswith("--"))
        out.append(f"--{name}=true" if bare else f"--{name}{sep}{value}")
    return out


def preset_or_file(config_path: str | Path) -> Path:
    """``config_path`` when it is a file, else the shipped preset of that name (an error lists the presets)."""
    from lerobot_defi.presets import PRESETS_DIR

    path = Path(config_path)
    if path.is_file():
        return path
    shipped = PRESETS_DIR / config_path
    if not shipped.is_file():
        raise FileNotFoundError(
            f"--config_path={config_path}: no such file (nor a preset in {PRESETS_DIR}: "
            f"{sorted(p.name for p in PRESETS_DIR.glob('*.yaml'))})"
        )
    return shipped


class PresetConfig:
    """Mixin of the trainers' top-level configs: what ``--config_path`` names is loaded first, later flags
    override it (LeRobot's ``parser.wrap`` calls ``from_pretrained`` with it, as for ``lerobot-train``)."""

    @classmethod
    def from_pretrained(cls, config_path: str | Path, cli_args: Sequence[str] = ()) -> Self:
        return draccus.parse(config_class=cls, config_path=preset_or_file(config_path), args=list(cli_args))


def parse_config[C](config_class: type[C], argv: Sequence[str] | None = None, prog: str | None = None) -> C:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``config_class`` with LeRobot's ``parser.wrap``; a bad
    command line, including a config's own check (its ``__post_init__``), raises one
    :class:`~lerobot_defi.command_line.CommandLineError` whose message names the problem."""
    args = normalise_cli_args(sys.argv[1:] if argv is None else argv)
    return parse_lerobot_command_line(config_class, args, prog or Path(sys.argv[0]).name)
