"""GFDM clips from a VPP dataset folder read directly (``GFDMDatasetConfig.format="vpp"``): the released SVD
latents train without conversion.

One episode per annotation JSON ``<root>/annotation/<split>/<id>.json``, parsed by ``vpp_format.read_annotation``
(instruction ``texts[0]``, number of frames ``n``); its latents are the ``latent_videos[k]`` files, float32
``(n, 4, 32, 32)``, also looked for under the other latent folder name (``vpp_format.resolve_latent``). Cameras
are the annotation's camera positions ``"0"``, ``"1"``.
"""

from __future__ import annotations

from pathlib import Path

from lerobot_defi.conversions.vpp_format import (
    ANNOTATION_DIR,
    LATENT_FOLDERS,
    VPPFormatError,
    annotation_files,
    read_annotation,
)
from lerobot_defi.pretrain.gfdm.clips import GFDMDatasetConfig


class VPPLatentSource:
    """A VPP dataset folder read directly: one episode per annotation JSON, latents from its ``.pt`` files."""

    def __init__(self, config: GFDMDatasetConfig, split: str):
        self.config = config
        root = Path(config.root)
        files = annotation_files(root, split)
        if not files:
            raise FileNotFoundError(
                f"dataset {config.repo_id}: no annotation files {root / ANNOTATION_DIR / split}/*.json (VPP "
                "layout: <root>/annotation/<split>/<id>.json with latent_videos/<split>/<id>/<cam>.pt)"
            )
        cameras = config.cameras or ["0"]
        if not all(c.isdigit() for c in cameras):
            raise ValueError(
                f"dataset {config.repo_id}: VPP cameras are annotation positions like '0', '1'; got {cameras}"
            )
        self.camera_keys = cameras
        self.texts, self.lengths, self.latent_paths, missing = [], [], [], []
        for path in files:
            annotation = read_annotation(path, root, split, videos=False)
            latents = {}
            for camera in cameras:
                k = int(camera)
                if k >= len(annotation.declared_latent_paths):
                    raise VPPFormatError(
                        f"{path}: field 'latent_videos[{k}]' is missing (camera {camera} has no latent_video_path)"
                    )
                if annotation.latent_paths[k] is None:
                    missing.append(str(root / annotation.declared_latent_paths[k]))
                latents[camera] = annotation.latent_paths[k]
            self.texts.append(annotation.instruction)
            self.lengths.append(annotation.num_frames)
            self.latent_paths.append(latents)
        if missing:
            raise FileNotFoundError(
                f"dataset {config.repo_id}: {len(missing)} latent file(s) missing (also looked under "
                f"{'/'.join(LATENT_FOLDERS)}), e.g. {missing[:3]}"
            )

    def task(self, episode: int, frame: int) -> str:
        return self.texts[episode]

    def latent_path(self, latent_dir, episode: int, camera: str) -> Path:
        return self.latent_paths[episode][camera]
