"""Model cards of imported folders: where the weights come from (release, code commit, sha256), what the key
map skipped, how to use the folder, and the licenses."""

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from lerobot_defi.official.report import REPORT_FILE

OFFICIAL_CODE = "https://github.com/LogosRoboticsGroup/DeFi"
OFFICIAL_CODE_COMMIT = "5682f96"  # the release the key map was written against
OFFICIAL_WEIGHTS = "https://huggingface.co/zbzzbz/DeFI"


def _card(tags: list[str], body: str) -> ModelCard:
    data = ModelCardData(
        license="other",
        license_name="mixed",
        library_name="lerobot",
        pipeline_tag="robotics",
        tags=["defi", "robotics", "lerobot", *tags],
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


_LICENSES = (
    "Licenses: the official DeFI code is Apache-2.0; the GFDM is a fine-tune of "
    "`stabilityai/stable-video-diffusion-img2vid` and is bound by Stability AI's license for it; CLIP ViT-B/32 "
    "(MIT) and T5-base (Apache-2.0) keep theirs."
)


def policy_card(report: dict, config) -> ModelCard:
    key_map = report["key_map"]
    skipped = "\n".join(
        f"- {n} tensor(s): {reason}" for reason, n in key_map["skipped_tensors_by_reason"].items()
    )
    text = (
        "taken from the Stage-3 checkpoint (`TVP_encoder.text_encoder.*` -> CLIP, `lam.text_encoder.*` -> T5)"
        if report["text_encoders"] == "checkpoint"
        else f"loaded from `{config.clip_text_path}` and `{config.t5_path}`"
    )
    body = f"""
# DeFI policy (official release, imported)

The DeFI policy of *Disentangled Robot Learning via Separate Forward and Inverse Dynamics Pretraining*
(ICLR 2026) trained by the authors on CALVIN ABC->D, converted for LeRobot with
`lerobot-defi-import-official` (package `lerobot_policy_defi`). Nothing was retrained.

## Source

- Weights: {OFFICIAL_WEIGHTS}
- Code the key map follows: {OFFICIAL_CODE} (commit `{OFFICIAL_CODE_COMMIT}`)
- Stage-3 checkpoint: `{Path(report["stage3"]["file"]).name}` (sha256 `{report["stage3"]["sha256"]}`)
- GFDM (fine-tuned SVD) folder: `{Path(report["gfdm"]["folder"]).name}`; weights sha256 in
  `{REPORT_FILE}`. The GFDM is stored inside `model.safetensors` (truncated UNet + VAE encoder).
- Frozen text encoders: {text}.

## Import

{key_map["mapped_tensors"]} tensors ({key_map["mapped_values"] / 1e6:.1f} M values) mapped by name with shape checks;
{report["trainable_tensors_filled"]} of {report["trainable_tensors"]} trainable tensors filled. Official tensors
knowingly not used:

{skipped}

## Use

```python
from lerobot_defi.policy.modeling_defi import DeFIPolicy
policy = DeFIPolicy.from_pretrained("<this folder or repo>")
```

Inputs: `observation.images.static` and `observation.images.gripper` (CALVIN RGB), the instruction under
`task`; output: 7-D relative action, gripper binarised by sign. To reproduce the authors' numbers: CALVIN
ABC->D, 1000 five-task sequences, **720 steps per subtask** as in the official evaluation script (the CALVIN
protocol is 360; report both), GFDM micro-conditioning `added_time_ids={tuple(config.added_time_ids)}`, latent
actions from predicted frames `{tuple(config.gidm_frame_indices)}` of the static camera, 10 sampler steps down
to sigma {config.action_head.sigma_min_infer}.

{_LICENSES}
"""
    return _card(["calvin", "imported"], body)


def gidm_card(report: dict) -> ModelCard:
    cfg = report["config"]
    skipped = "\n".join(
        f"- {n} tensor(s): {reason}" for reason, n in report["key_map"]["skipped_tensors_by_reason"].items()
    )
    body = f"""
# DeFI GIDM (official Stage-2 latent action model, imported)

The general inverse-dynamics model of DeFI (a latent-action VQ model on DINOv2 patch features with T5
instructions, pretrained by the authors on Open-X-Embodiment + Ego4D), converted to
`lerobot_defi.models.gidm.LatentActionModel` with `lerobot-defi-import-official gidm`.

- Weights: {OFFICIAL_WEIGHTS}; code: {OFFICIAL_CODE} (commit `{OFFICIAL_CODE_COMMIT}`)
- Checkpoint: `{Path(report["stage2"]["file"]).name}` (sha256 `{report["stage2"]["sha256"]}`)
- Architecture: width {cfg["model_dim"]}, {cfg["encoder_blocks"]} encoder + {cfg["decoder_blocks"]} decoder
  blocks, {cfg["num_heads"]} heads, {cfg["num_latent_tokens"]} latent tokens from a codebook of
  {cfg["codebook_size"]} x {cfg["latent_dim"]}.

Not converted:
{skipped}

Use as the starting GIDM of a new DeFI policy: `--policy.gidm_path=<this folder or repo>`.

{_LICENSES}
"""
    return _card(["gidm", "latent-action", "imported"], body)


def gfdm_card(info: dict) -> ModelCard:
    body = f"""
# DeFI GFDM (official Stage-1 video model, imported)

The language-conditioned Stable Video Diffusion fine-tune of DeFI (released as `checkpoint-100000`), reduced to
what `lerobot_defi.models.gfdm.GFDMFeatureExtractor` reads (`unet/`, `vae/`, plus `scheduler/`). Dropped: the
unused CLIP ViT-H image encoder and the pipeline index. Features: {info["feature_channels"]} channels on a
{info["feature_grid_at_256px"]}x{info["feature_grid_at_256px"]} grid for 256 px images.

- Weights: {OFFICIAL_WEIGHTS}; code: {OFFICIAL_CODE} (commit `{OFFICIAL_CODE_COMMIT}`)
- Weight files and sha256: see `{REPORT_FILE}`.

Use as `--policy.gfdm_path=<this folder or repo>`.

{_LICENSES}
"""
    return _card(["gfdm", "video-diffusion", "imported"], body)
