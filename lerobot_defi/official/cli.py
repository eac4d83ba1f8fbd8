"""``lerobot-defi-import-official {policy,gidm,gfdm} --option=value ...``: the authors' released weights as
folders of this package, one subcommand per released artifact (options in LeRobot's draccus style)::

    lerobot-defi-import-official policy --stage3=saved_models/last.pt --gfdm=checkpoint-100000 --output=DIR
    lerobot-defi-import-official gidm --ckpt=lam.ckpt --output=DIR
    lerobot-defi-import-official gfdm --folder=checkpoint-100000 [--output=DIR]

Each output folder is written atomically and carries a model card and an import report; ``--push_to_hub=true
--hub_repo_id=<user>/<name>`` uploads it. Bad input (a file that is not the release, an existing output without
``--overwrite=true``) ends with one ``error:`` line and exit status 2.
"""

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from lerobot_defi.command_line import CommandLineError, parse_command_line
from lerobot_defi.official.checkpoints import OfficialCheckpointError
from lerobot_defi.official.policy import TEXT_ENCODER_SOURCES

PROG = "lerobot-defi-import-official"


@dataclass(kw_only=True)
class ImportOutputConfig:
    """Where an import writes and whether it publishes the folder."""

    # Folder to write (atomically).
    output: Path | None = None
    # Replace an existing output folder.
    overwrite: bool = False
    # Upload the written folder to the Hub repo hub_repo_id.
    push_to_hub: bool = False
    hub_repo_id: str | None = None
    # Create the Hub repo as private.
    hub_private: bool = False

    def __post_init__(self):
        if self.push_to_hub and self.output is None:
            raise ValueError("--push_to_hub=true needs --output (the folder to upload)")
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("--push_to_hub=true needs --hub_repo_id=<user>/<name>")


@dataclass(kw_only=True)
class PolicyImportConfig(ImportOutputConfig):
    """lerobot-defi-import-official policy: the Stage-3 checkpoint + the GFDM folder -> a DeFI policy folder."""

    # Official saved_models/*.pt.
    stage3: Path
    # Official SVD pipeline folder (checkpoint-100000).
    gfdm: Path
    output: Path
    # DeFI preset name or YAML/JSON config for the architecture, cameras and text encoder ids (default: the
    # official CALVIN recipe).
    policy_config: str | None = None
    # Frozen CLIP/T5 weights from the Stage-3 file ("checkpoint") or from the config's ids ("pretrained").
    text_encoders: str = "checkpoint"
    # Fail on official tensors that no rule of the key map uses.
    strict: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.text_encoders not in TEXT_ENCODER_SOURCES:
            raise ValueError(
                f"--text_encoders must be one of {list(TEXT_ENCODER_SOURCES)}, got {self.text_encoders!r}"
            )


@dataclass(kw_only=True)
class GIDMImportConfig(ImportOutputConfig):
    """lerobot-defi-import-official gidm: the Stage-2 Lightning checkpoint -> a LatentActionModel folder."""

    # Official latent-action .ckpt (keys lam.*).
    ckpt: Path
    output: Path
    # Attention heads (official 12; not visible in the tensor shapes).
    num_heads: int = 12
    # Patches per frame (official 16x16 = 256; not visible in the tensor shapes).
    num_patches: int = 256
    # Fail on official tensors that no rule of the key map uses.
    strict: bool = False


@dataclass(kw_only=True)
class GFDMImportConfig(ImportOutputConfig):
    """lerobot-defi-import-official gfdm: check that the GFDM folder reads as it is; --output writes a slim copy
    (unet/, vae/, scheduler/) without the unused image encoder."""

    # Official SVD pipeline folder (checkpoint-100000).
    folder: Path


SUBCOMMANDS = {
    "policy": (PolicyImportConfig, "Stage-3 checkpoint + GFDM folder -> DeFI policy folder"),
    "gidm": (GIDMImportConfig, "Stage-2 Lightning checkpoint -> LatentActionModel folder"),
    "gfdm": (GFDMImportConfig, "check the GFDM folder reads as is; --output writes a slim copy"),
}


def _usage() -> str:
    lines = [f"  {name:7s} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return (
        f"usage: {PROG} {{{','.join(SUBCOMMANDS)}}} --option=value ...\n\n"
        "Convert the authors' released DeFI weights into lerobot_policy_defi folders.\n\n"
        + "\n".join(lines)
        + f"\n\nOptions of a subcommand: {PROG} <subcommand> --help"
    )


def _run(command: str, cfg) -> None:
    if command == "policy":
        from lerobot_defi.official.policy import import_policy

        config = None
        if cfg.policy_config:
            from lerobot_defi.policy.configuration_defi import load_preset

            config = load_preset(cfg.policy_config)
        import_policy(
            cfg.stage3,
            cfg.gfdm,
            cfg.output,
            config=config,
            text_encoders=cfg.text_encoders,
            strict=cfg.strict,
            overwrite=cfg.overwrite,
        )
    elif command == "gidm":
        from lerobot_defi.official.gidm import import_gidm

        import_gidm(
            cfg.ckpt,
            cfg.output,
            num_heads=cfg.num_heads,
            num_patches=cfg.num_patches,
            strict=cfg.strict,
            overwrite=cfg.overwrite,
        )
    else:
        from lerobot_defi.official.gfdm import import_gfdm

        import_gfdm(cfg.folder, cfg.output, overwrite=cfg.overwrite)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in SUBCOMMANDS:
        print(_usage())
        if argv and argv[0] not in {"-h", "--help"}:
            print(
                f"error: unknown subcommand {argv[0]!r}; choose one of {list(SUBCOMMANDS)}", file=sys.stderr
            )
            raise SystemExit(2)
        return 0
    command, options = argv[0], argv[1:]
    try:
        cfg = parse_command_line(SUBCOMMANDS[command][0], options, prog=f"{PROG} {command}")
        _run(command, cfg)
    except (CommandLineError, OfficialCheckpointError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if cfg.output is not None:
        print(f"wrote {cfg.output}")
    if cfg.push_to_hub:
        from lerobot_defi.pretrain.shared.publishing import push_folder_to_hub

        url = push_folder_to_hub(
            cfg.output,
            cfg.hub_repo_id,
            private=cfg.hub_private,
            commit_message=f"Import the official DeFI release with {PROG} {command}",
        )
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
