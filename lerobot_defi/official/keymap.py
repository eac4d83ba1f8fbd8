"""Explicit map from the official DeFI checkpoint names to this package's parameter names (docs/method.md §3.5,
§3.6, §4.1, §4.9, §8.16, §8.17, §8.19).

Our modules use names that say what things are, so the official names appear only here. Each rule maps one
official module (followed by ``.weight`` / ``.bias``) or parameter to ours; ``{i}`` stands for a block index.
Subtree rules move a whole frozen model (a Hugging Face text encoder) under a new prefix. Skip rules name
official tensors that have no counterpart on purpose, with the reason that the import report shows.

:func:`map_state_dict` applies the rules with shape checks and says what it used, skipped, could not use and
could not fill; it never guesses.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

# --- Stage 3: the DeFI policy (`saved_models/*.pt`, entry "model") ------------------------------------------

VIDEO_FORMER_RULES = (
    ("Video_Former.latents", "video_former.queries"),
    ("Video_Former.time_pos_emb", "video_former.frame_embedding"),
    ("Video_Former.goal_emb.0", "video_former.input_mlp.0"),
    ("Video_Former.goal_emb.2", "video_former.input_mlp.2"),
    ("Video_Former.layers.{i}.0.norm_media", "video_former.layers.{i}.perceiver.norm_media"),
    ("Video_Former.layers.{i}.0.norm_latents", "video_former.layers.{i}.perceiver.norm_latents"),
    ("Video_Former.layers.{i}.0.to_q", "video_former.layers.{i}.perceiver.to_q"),
    ("Video_Former.layers.{i}.0.to_k", "video_former.layers.{i}.perceiver.to_k"),
    ("Video_Former.layers.{i}.0.to_v", "video_former.layers.{i}.perceiver.to_v"),
    ("Video_Former.layers.{i}.0.to_out", "video_former.layers.{i}.perceiver.to_out"),
    ("Video_Former.layers.{i}.1.qkv", "video_former.layers.{i}.temporal.qkv"),
    ("Video_Former.layers.{i}.1.proj", "video_former.layers.{i}.temporal.proj"),
    ("Video_Former.layers.{i}.2.0", "video_former.layers.{i}.mlp.0"),
    ("Video_Former.layers.{i}.2.1", "video_former.layers.{i}.mlp.1"),
    ("Video_Former.layers.{i}.2.3", "video_former.layers.{i}.mlp.3"),
    ("Video_Former.norm", "video_former.norm"),
)

GIDM_INPUT_RULES = (
    ("goal_emb.0", "gidm_feature_proj.0"),
    ("goal_emb.2", "gidm_feature_proj.2"),
    ("time_pos_emb", "gidm_frame_embedding"),
)

_HEAD = "model.inner_model"
_ATTENTION = (("query", "query"), ("key", "key"), ("value", "value"), ("c_proj", "out"))

ACTION_HEAD_RULES = (
    (f"{_HEAD}.tok_emb", "action_head.video_proj"),
    (f"{_HEAD}.tok_emb_token", "action_head.latent_action_proj"),
    (f"{_HEAD}.lang_emb.0", "action_head.goal_proj.0"),
    (f"{_HEAD}.lang_emb.2", "action_head.goal_proj.2"),
    (f"{_HEAD}.encoder.blocks.{{i}}.ln_1", "action_head.context_blocks.{i}.norm_attention"),
    *(
        (f"{_HEAD}.encoder.blocks.{{i}}.attn.{theirs}", f"action_head.context_blocks.{{i}}.attention.{ours}")
        for theirs, ours in _ATTENTION
    ),
    (f"{_HEAD}.encoder.blocks.{{i}}.ln_2", "action_head.context_blocks.{i}.norm_mlp"),
    (f"{_HEAD}.encoder.blocks.{{i}}.mlp.c_fc", "action_head.context_blocks.{i}.mlp.fc_in"),
    (f"{_HEAD}.encoder.blocks.{{i}}.mlp.c_proj", "action_head.context_blocks.{i}.mlp.fc_out"),
    (f"{_HEAD}.encoder.ln", "action_head.context_norm"),
    (f"{_HEAD}.decoder.blocks.{{i}}.adaLN_zero.modulation.1", "action_head.denoising_blocks.{i}.modulation"),
    (f"{_HEAD}.decoder.blocks.{{i}}.ln_1", "action_head.denoising_blocks.{i}.norm_self_attention"),
    *(
        (
            f"{_HEAD}.decoder.blocks.{{i}}.attn.{theirs}",
            f"action_head.denoising_blocks.{{i}}.self_attention.{ours}",
        )
        for theirs, ours in _ATTENTION
    ),
    (f"{_HEAD}.decoder.blocks.{{i}}.ln3", "action_head.denoising_blocks.{i}.norm_cross_attention"),
    *(
        (
            f"{_HEAD}.decoder.blocks.{{i}}.cross_att.{theirs}",
            f"action_head.denoising_blocks.{{i}}.cross_attention.{ours}",
        )
        for theirs, ours in _ATTENTION
    ),
    (f"{_HEAD}.decoder.blocks.{{i}}.ln_2", "action_head.denoising_blocks.{i}.norm_mlp"),
    (f"{_HEAD}.decoder.blocks.{{i}}.mlp.c_fc", "action_head.denoising_blocks.{i}.mlp.fc_in"),
    (f"{_HEAD}.decoder.blocks.{{i}}.mlp.c_proj", "action_head.denoising_blocks.{i}.mlp.fc_out"),
    (f"{_HEAD}.decoder.ln", "action_head.output_norm"),
    (f"{_HEAD}.sigma_emb.1", "action_head.sigma_embedding.fc_in"),
    (f"{_HEAD}.sigma_emb.3", "action_head.sigma_embedding.fc_out"),
    (f"{_HEAD}.action_emb", "action_head.action_in"),
    (f"{_HEAD}.action_pred", "action_head.action_out"),
)

# --- the latent action model (`lam.*`: Stage-2 Lightning checkpoint and the GIDM inside Stage 3) -----------

_LAM_ATTENTION = (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "out"))


def lam_encoder_rules(target: str) -> tuple[tuple[str, str], ...]:
    """Rules for the GIDM encoder side, mapped under ``target`` (``"gidm"`` in the policy, ``"encoder"`` in
    :class:`~lerobot_defi.models.gidm.LatentActionModel`)."""
    block = "lam.encoder.transformer_blocks.{i}"
    ours = f"{target}.blocks.{{i}}"
    return (
        ("lam.action_latent", f"{target}.action_queries"),
        ("lam.encoder.ffn.0", f"{target}.input_projection.0"),
        ("lam.encoder.ffn.1", f"{target}.input_projection.1"),
        ("lam.encoder.ffn.2", f"{target}.input_projection.2"),
        *((f"{block}.spatial_attn.{t}", f"{ours}.spatial_attention.{o}") for t, o in _LAM_ATTENTION),
        *((f"{block}.temporal_attn.{t}", f"{ours}.temporal_attention.{o}") for t, o in _LAM_ATTENTION),
        (f"{block}.ffn.0", f"{ours}.mlp.0"),
        (f"{block}.ffn.3", f"{ours}.mlp.3"),
        (f"{block}.norm1", f"{ours}.norm_spatial"),
        (f"{block}.norm2", f"{ours}.norm_temporal"),
        (f"{block}.norm3", f"{ours}.norm_mlp"),
        ("lam.to_codebook", f"{target}.to_codebook"),
        ("lam.vq.codebook", f"{target}.quantizer.codebook"),
        ("lam.action_up", f"{target}.action_up"),
        ("lam.lang_proj", f"{target}.text_projection"),
    )


LAM_DECODER_RULES = (
    ("lam.patch_up", "decoder.patch_up"),
    ("lam.decoder.ffn.0", "decoder.input_projection.0"),
    ("lam.decoder.ffn.1", "decoder.input_projection.1"),
    ("lam.decoder.ffn.2", "decoder.input_projection.2"),
    *(
        (
            f"lam.decoder.transformer_blocks.{{i}}.spatial_attn.{t}",
            f"decoder.blocks.{{i}}.spatial_attention.{o}",
        )
        for t, o in _LAM_ATTENTION
    ),
    ("lam.decoder.transformer_blocks.{i}.ffn.0", "decoder.blocks.{i}.mlp.0"),
    ("lam.decoder.transformer_blocks.{i}.ffn.3", "decoder.blocks.{i}.mlp.3"),
    ("lam.decoder.transformer_blocks.{i}.norm1", "decoder.blocks.{i}.norm_spatial"),
    ("lam.decoder.transformer_blocks.{i}.norm2", "decoder.blocks.{i}.norm_mlp"),
    ("lam.decoder.out", "decoder.output_projection"),
)

# --- frozen text encoders (whole Hugging Face models moved under our prefix) --------------------------------

CLIP_TEXT_SUBTREE = ("TVP_encoder.text_encoder.", "text.clip.")  # HF CLIPTextModelWithProjection (ViT-B/32)
T5_SUBTREE = ("lam.text_encoder.", "text.t5.")  # HF T5EncoderModel (t5-base)

# --- official tensors without a counterpart, and why --------------------------------------------------------

DEAD_ACTION_HEAD = {
    f"{_HEAD}.pos_emb": "dead: the action head's position embedding is never added (docs/method.md §4.3f, §8.17)",
    f"{_HEAD}.goal_emb.": "dead: the action head's goal_emb is built but unused; lang_emb is used (docs/method.md §8.17)",
    f"{_HEAD}.proprio_emb.": "dead: proprioception is not an input of the policy (docs/method.md §4.2, §8.17)",
}
OPENAI_CLIP_COPY = {
    "language_goal.": "redundant: OpenAI CLIP ViT-B/32, the same text tower as TVP_encoder.text_encoder; "
    "text.clip's projected pooled output gives the goal token (docs/method.md §8.16)",
}
STAGE2_ONLY = {
    "lam.dino_encoder.": "not part of our GIDM: the frozen DINOv2 of pretraining; ours takes patch features (docs/method.md §3.1)",
    "lam.text_encoder.": "not part of our GIDM: the frozen T5; ours takes T5 states (the policy holds T5 as text.t5)",
}
# Non-persistent index buffers that older transformers versions wrote into state dicts.
INDEX_BUFFERS = {"position_ids": "index buffer: rebuilt by transformers"}


def policy_rules() -> tuple[tuple[str, str], ...]:
    """All tensor rules of the Stage-3 policy's trainable part."""
    return VIDEO_FORMER_RULES + GIDM_INPUT_RULES + ACTION_HEAD_RULES + lam_encoder_rules("gidm")


def latent_action_model_rules() -> tuple[tuple[str, str], ...]:
    """All tensor rules of the Stage-2 checkpoint into :class:`LatentActionModel`."""
    return lam_encoder_rules("encoder") + LAM_DECODER_RULES


# --- matching -----------------------------------------------------------------------------------------------


def _compile(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)"))


@dataclass(frozen=True)
class KeyMap:
    """Tensor rules (module/parameter -> module/parameter), subtree rules (prefix -> prefix) and skip rules
    (prefix -> reason)."""

    rules: tuple[tuple[str, str], ...]
    subtrees: tuple[tuple[str, str], ...] = ()
    skips: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        compiled = [(_compile(a), b, _compile(b), a) for a, b in self.rules]
        object.__setattr__(self, "_compiled", compiled)

    def skip_reason(self, official: str) -> str | None:
        for prefix, reason in self.skips.items():
            if official == prefix or (prefix.endswith(".") and official.startswith(prefix)):
                return reason
        leaf = official.rsplit(".", 1)[-1]
        if leaf in INDEX_BUFFERS and any(official.startswith(a) for a, _ in self.subtrees):
            return INDEX_BUFFERS[leaf]
        return None

    def ours(self, official: str) -> str | None:
        """Our name of an official tensor, or None when no rule covers it."""
        for source, target in self.subtrees:
            if official.startswith(source):
                return target + official[len(source) :]
        for pattern, target, _, _ in self._compiled:
            match = _match_tensor(pattern, official)
            if match is not None:
                index, leaf = match
                return target.replace("{i}", index or "") + leaf
        return None

    def official(self, ours: str) -> str | None:
        """The official name that would fill one of our tensors (used in error messages)."""
        for source, target in self.subtrees:
            if ours.startswith(target):
                return source + ours[len(target) :]
        for _, _, pattern, source in self._compiled:
            match = _match_tensor(pattern, ours)
            if match is not None:
                index, leaf = match
                return source.replace("{i}", index or "") + leaf
        return None


def _match_tensor(pattern: re.Pattern, name: str) -> tuple[str | None, str] | None:
    """Match ``name`` = ``<module>.weight|bias`` or ``<parameter>``; returns (block index, leaf suffix)."""
    match = pattern.match(name)
    if match is None:
        return None
    rest = name[match.end() :]
    if rest not in ("", ".weight", ".bias"):
        return None
    return match.groupdict().get("i"), rest


def stage3_keymap(text_encoders_from_checkpoint: bool = True) -> KeyMap:
    """The Stage-3 map; frozen text encoders are mapped from the checkpoint or skipped (then the policy takes
    them from their pretrained ids)."""
    skips = {**DEAD_ACTION_HEAD, **OPENAI_CLIP_COPY}
    subtrees: tuple[tuple[str, str], ...] = ()
    if text_encoders_from_checkpoint:
        subtrees = (CLIP_TEXT_SUBTREE, T5_SUBTREE)
    else:
        reason = "replaced: text encoder taken from its pretrained id (--text-encoders pretrained)"
        skips |= {CLIP_TEXT_SUBTREE[0]: reason, T5_SUBTREE[0]: reason}
    return KeyMap(policy_rules(), subtrees, skips)


def stage2_keymap() -> KeyMap:
    return KeyMap(latent_action_model_rules(), (), dict(STAGE2_ONLY))


# --- applying a map -----------------------------------------------------------------------------------------


@dataclass
class KeyMapResult:
    """Outcome of :func:`map_state_dict`: ``state`` holds our names -> official tensors (cast to our dtype);
    ``sources`` our name -> official name; ``skipped`` official name -> reason; ``unused`` official name ->
    why it could not be used; ``shape_mismatches`` (official name, our name, official shape, our shape);
    ``missing`` our names left unfilled (including those whose official tensor had another shape)."""

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    shape_mismatches: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        reasons: dict[str, int] = {}
        for reason in self.skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "mapped_tensors": len(self.state),
            "mapped_values": sum(t.numel() for t in self.state.values()),
            "skipped_tensors_by_reason": reasons,
            "unused_official_tensors": dict(self.unused),
            "missing_tensors": list(self.missing),
            "shape_mismatches": self.shape_mismatch_lines(),
        }

    def shape_mismatch_lines(self) -> list[str]:
        return [f"{a} {s} -> {b} expects {t}" for a, b, s, t in self.shape_mismatches]

    def absent(self) -> list[str]:
        """Our names left unfilled because no official tensor (of any shape) was provided for them."""
        mismatched = {ours for _, ours, _, _ in self.shape_mismatches}
        return [name for name in self.missing if name not in mismatched]


def map_state_dict(
    official: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    keymap: KeyMap,
    tied: Iterable[Iterable[str]] = (),
) -> KeyMapResult:
    """Rename ``official`` tensors to our names with ``keymap`` and check them against ``expected`` (our
    state dict; meta tensors are fine: only names, shapes and dtypes are read).

    ``tied``: groups of our names that share one tensor (e.g. T5's ``shared`` and ``encoder.embed_tokens``);
    one provided member fills the others. Official dtypes are cast to ours.
    """
    result = KeyMapResult()
    for name, tensor in official.items():
        reason = keymap.skip_reason(name)
        if reason is not None:
            result.skipped[name] = reason
            continue
        ours = keymap.ours(name)
        if ours is None:
            result.unused[name] = "no rule in the key map (not part of the official DeFI layout)"
            continue
        if ours not in expected:
            result.unused[name] = f"maps to {ours}, which this model does not have (fewer layers/blocks?)"
            continue
        if ours in result.sources:
            result.unused[name] = f"duplicate source for {ours} (already filled from {result.sources[ours]})"
            continue
        target = expected[ours]
        if tuple(tensor.shape) != tuple(target.shape):
            result.shape_mismatches.append((name, ours, tuple(tensor.shape), tuple(target.shape)))
            continue
        result.state[ours] = tensor if tensor.dtype == target.dtype else tensor.to(target.dtype)
        result.sources[ours] = name
    for group in tied:
        group = list(group)
        present = [n for n in group if n in result.state]
        for name in group if present else []:
            if name not in result.state and name in expected:
                result.state[name] = result.state[present[0]]
                result.sources[name] = result.sources[present[0]]
    result.missing = [name for name in expected if name not in result.state]
    return result
