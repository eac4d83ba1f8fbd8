"""``DeFIPolicy``: the DeFI policy as a LeRobot ``PreTrainedPolicy`` (docs/method.md §4.3, §5).

Per observation (one step, every camera in [-1, 1] at ``image_size``) and instruction:

1. frozen text encoders -> CLIP context ``(B, 20, 512)``, CLIP goal ``(B, 512)``, T5 tokens ``(B, L, 768)``;
2. frozen GFDM, one UNet pass per camera -> predictive features ``(V*B, F, 2560, 16, 16)``;
3. Video Former over the predicted frames of the Video-Former cameras -> ``(B, F*14, 384)``;
4. GIDM encoder on two predicted frames of the GIDM camera -> latent-action tokens ``(B, 4, 768)`` + VQ losses;
5. action head: context ``[goal, video, latent action]`` ``(B, 229, 384)`` computed once per chunk, then the
   EDM loss (training) or the 10-step sampler (inference).

A saved policy is self-contained: ``model.safetensors`` holds the frozen GFDM (truncated UNet + VAE
encoder) and text encoders too, the tokenizers are saved beside it, and the architectures of the pretrained
parts are recorded in ``config.json``.
"""

import json
import logging
from collections import deque
from contextlib import nullcontext
from pathlib import Path

import torch
from einops import rearrange
from huggingface_hub import snapshot_download
from huggingface_hub.constants import CONFIG_NAME
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION
from lerobot.utils.device_utils import resolve_safetensors_device
from safetensors import safe_open
from torch import Tensor, nn

from lerobot_defi.models.action_head import ActionHead
from lerobot_defi.models.codebook_stats import code_counts, codebook_stats
from lerobot_defi.models.frame_convolution import use_frame_convolutions
from lerobot_defi.models.gfdm import text_context_from_clip
from lerobot_defi.models.gfdm_fp8 import Float8Conversion, check_fp8_available, convert_unet_to_fp8
from lerobot_defi.models.gidm import LatentActionEncoder, LatentActionModel
from lerobot_defi.models.video_former import VideoFormer
from lerobot_defi.policy.codebook_restart import CodebookRestarts
from lerobot_defi.policy.compile_cache import cached_compiled_function, config_as_saved
from lerobot_defi.policy.configuration_defi import DeFIConfig
from lerobot_defi.policy.cuda_graphs import CUDAGraphedFunction
from lerobot_defi.policy.low_precision_weights import LowPrecisionWeights
from lerobot_defi.policy.pretrained_parts import (
    TOKENIZER_DIRS,
    load_pretrained_parts,
    resolve_pretrained_architectures,
    with_saved_architectures,
)
from lerobot_defi.policy.sampling_report import check_sampleable_frames, command_line_episodes

logger = logging.getLogger(__name__)

# Only these files of a Hub repo are needed to rebuild a saved policy.
PRETRAINED_FILES = ["config.json", "model.safetensors", *(f"{d}/*" for d in TOKENIZER_DIRS.values())]
# Written next to the weights of a policy that was trained: what training did with the GIDM's codebook.
CODEBOOK_REPORT_FILE = "gidm_codebook.json"
# The parts the chunk runs under the autocast of ``dtype`` (the GFDM turns autocast off inside, the text encoders
# run before it): their matrix products read low-precision copies of their weights at inference.
AUTOCAST_PARTS = ("gidm_feature_proj", "gidm", "video_former", "action_head")
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the policy built from the given configuration."""


class DeFIPolicy(PreTrainedPolicy):
    config_class = DeFIConfig
    name = "defi"

    def __init__(
        self,
        config: DeFIConfig,
        pretrained_dir: str | Path | None = None,
        dataset_stats: dict | None = None,
        **kwargs,
    ):
        """``pretrained_dir`` is set by :meth:`from_pretrained`: the frozen parts are then built as empty
        skeletons from the recorded architectures and their weights come from the checkpoint. ``dataset_stats``
        (from ``make_policy``) decides ``binarize_gripper`` when the config leaves it open; ``dataset_meta`` (given
        by ``lerobot-train``) is checked for frames training can sample (``sampling_report``).

        ``config`` is not changed: the policy runs with and saves ``self.config``, the given config plus the
        fields its pretrained parts resolve (:func:`resolve_pretrained_architectures`)."""
        super().__init__(config)
        config.validate_features()
        if config.gfdm_fp8:
            check_fp8_available(config.device)
        if kwargs.get("dataset_meta") is not None:
            check_sampleable_frames(
                kwargs["dataset_meta"], config.drop_n_last_frames, command_line_episodes()
            )
        parts = load_pretrained_parts(config, pretrained_dir)
        self.config = config = resolve_pretrained_architectures(config, parts, dataset_stats)
        self.gfdm = parts.gfdm
        self.text = parts.text

        gidm_dim = config.gidm.model_dim
        feature_dim = self.gfdm.feature_dim
        self.gidm_feature_proj = nn.Sequential(
            nn.Linear(feature_dim, config.gidm_input_hidden_dim),
            nn.GELU(),
            nn.Linear(config.gidm_input_hidden_dim, gidm_dim),
        )
        self.gidm_frame_embedding = nn.Parameter(
            torch.randn(2, 1, gidm_dim) * config.gidm_frame_embedding_init_std
        )
        self.gidm = LatentActionEncoder(config.gidm)
        self.video_former = VideoFormer(config.video_former, feature_dim, config.gfdm_num_frames)
        video_tokens = config.gfdm_num_frames * config.video_former.queries_per_frame
        self.action_head = ActionHead(
            config.action_head,
            action_dim=config.action_dim,
            chunk_size=config.chunk_size,
            goal_dim=self.text.clip.config.projection_dim,
            video_dim=config.video_former.dim,
            latent_action_dim=gidm_dim,
            context_length=1 + video_tokens + config.gidm.num_latent_tokens,
            loss_noise_draws=config.loss_noise_draws,
        )
        self.gidm_load_report: dict | None = None
        # FP8 layers of the GFDM UNet (gfdm_fp8): made at the first call on the GPU (_use_fp8_gfdm), undone by
        # .to() and load_state_dict, which then see the bf16 weights.
        self._gfdm_fp8: Float8Conversion | None = None
        self.codebook_restarts = CodebookRestarts(config.gidm.codebook_size, config.gidm_code_restart_steps)
        self._compiled_sample = None
        self._compiled_training_losses = None
        # Inference with dtype bfloat16 / float16: the trainable parts' matrix products read copies of their
        # weights in that dtype, made at the first chunk and refreshed when the weights change
        # (policy/low_precision_weights.py); training reads the fp32 weights.
        dtype = AUTOCAST_DTYPES.get(config.dtype)
        self._low_precision_weights = LowPrecisionWeights(AUTOCAST_PARTS, dtype) if dtype else None
        if parts.gidm is not None:
            self.gidm_load_report = self.load_gidm_encoder(parts.gidm, source=config.gidm_path)
        if config.compile_mode:
            self.compile_modules(config.compile_mode)
        self.reset()

    def compile_modules(self, mode: str = "reduce-overhead") -> None:
        """``torch.compile`` for speed; parameter names and results are unchanged.

        Inference compiles the whole tensor path of a chunk (GFDM pass, Video Former, GIDM, context, the
        10 solver steps) as one function; with ``"reduce-overhead"`` (or ``"max-autotune"``) it is then
        replayed from a CUDA graph per input shape (:class:`CUDAGraphedFunction`). Training compiles the tensor
        path of the loss (GFDM pass, Video Former, GIDM, context, action loss) as one function without CUDA graphs,
        so its backward is one compiled graph too; the GFDM alone is also compiled, for the eager chunk of a
        policy in training mode. Instruction tokens are padded to buckets of 16 so
        shapes stay static across instructions (padding is masked out). The GFDM's temporal convolutions run as
        2-D convolutions (``use_frame_convolutions``: same weights and sums). With ``dtype`` bfloat16 / float16 the
        compiled chunk reads the low-precision copies of the trainable weights as graph inputs
        (:meth:`_inference_chunk`), so neither the graph nor its replays cast them.
        """
        self.prepare_for_compile()
        graphed = mode in ("reduce-overhead", "max-autotune")
        inference_mode = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}.get(
            mode, mode
        )
        compiled = torch.compile(self._inference_chunk, mode=inference_mode, dynamic=False)
        # Artefacts kept on disk per policy and input shapes: a restarted process skips most of the compilation.
        description = {"policy_config": config_as_saved(self.config)}
        compiled = cached_compiled_function(compiled, self.config.compile_cache_dir, self, description, mode)
        self._compiled_sample = CUDAGraphedFunction(compiled) if graphed else compiled
        training_mode = "max-autotune-no-cudagraphs" if mode == "max-autotune" else "default"
        # Inductor's mix-order reduction fusion (CUDA) fails on this backward graph in torch 2.11 ("AssertionError:
        # 128 v.s. 32" in MixOrderReduction.get_numel_rnumel, seen on an H100): off for the training graph.
        # Channels-last convolutions are forced: inductor's training-graph heuristic skips them for a graph with a
        # convolution of fewer output than input channels (the UNet's up-block resnets), and cuDNN's bf16 kernels
        # then transpose around each convolution (docs/performance.md §2). Every convolution here is the frozen
        # GFDM's, and the inference graph already runs them channels-last.
        training_options = {
            **torch._inductor.list_mode_options(training_mode),
            "triton.mix_order_reduction": False,
            "force_layout_optimization": True,
        }
        self._compiled_training_losses = torch.compile(
            self._training_losses, options=training_options, dynamic=False
        )
        self.gfdm.compile(mode=training_mode, dynamic=False)

    def prepare_for_compile(self) -> None:
        """What :meth:`compile_modules` sets up before compiling (also for tools that trace the chunk function):
        instruction tokens padded to buckets of 16, the GFDM's temporal convolutions as 2-D convolutions, and the
        process-wide convolution settings (cuDNN picks the fastest algorithm per shape, inductor runs 1x1
        convolutions as matrix products)."""
        import torch._inductor.config as inductor_config

        self.text.pad_to_multiple_of = 16
        torch.backends.cudnn.benchmark = True
        inductor_config.conv_1x1_as_mm = True
        use_frame_convolutions(self.gfdm)

    def compile_cache_entries(self) -> list:
        """The compile cache's :class:`CacheEntryStatus` of each input signature the compiled chunk has seen, in
        the order they came (loaded or saved, graphs compiled, seconds); empty without a compiled chunk or cache."""
        compiled = self._compiled_sample
        cached = compiled.fn if isinstance(compiled, CUDAGraphedFunction) else compiled
        return list(getattr(cached, "entries", {}).values())

    def _drop_cuda_graphs(self) -> None:
        graphed = getattr(self, "_compiled_sample", None)  # _apply also runs while __init__ builds modules
        if isinstance(graphed, CUDAGraphedFunction):
            graphed.clear()

    def release_inference_memory(self) -> None:
        """Free the captured CUDA graphs of the compiled chunk and the low-precision weight copies they read (both
        are made again at the next chunk), e.g. before training at a larger batch on the same GPU."""
        self._drop_cuda_graphs()
        weights = getattr(self, "_low_precision_weights", None)  # _apply runs in __init__ too
        if weights is not None:
            weights.drop()

    def weights_changed(self) -> None:
        """Tell the policy that its weights were written where PyTorch's version counters do not see it (through
        ``parameter.data``): the next chunk copies them into its low-precision weights again. Optimizer steps,
        ``load_state_dict``, ``.to()`` and in-place ops on the parameters are seen without it."""
        if self._low_precision_weights is not None:
            self._low_precision_weights.mark_changed()

    def _revert_fp8_gfdm(self) -> None:
        conversion = getattr(self, "_gfdm_fp8", None)  # _apply also runs while __init__ builds modules
        if conversion is not None:
            conversion.revert()
            self._gfdm_fp8 = None

    def _use_fp8_gfdm(self, device: torch.device) -> None:
        """With ``gfdm_fp8``: FP8 matrix products in the GFDM UNet from the first call on ``device`` on
        (``models/gfdm_fp8.py``); raises, naming the option, where they cannot run."""
        if not self.config.gfdm_fp8 or self._gfdm_fp8 is not None:
            return
        check_fp8_available(device)
        self._drop_cuda_graphs()
        self._gfdm_fp8 = convert_unet_to_fp8(self.gfdm.unet)
        logger.info(
            "gfdm_fp8: FP8 matrix products in %d layers of the GFDM UNet (%d linear, %d 1x1 convolutions)",
            len(self._gfdm_fp8.plan.targets),
            len(self._gfdm_fp8.plan.linears),
            len(self._gfdm_fp8.plan.pointwise_convs),
        )

    def _apply(self, fn, recurse: bool = True):
        # .to() / .cuda() / .half() may move parameters: captured graphs and the low-precision weight copies would
        # read the old addresses (and dtypes), and FP8 layers are made again for the new device at the next call.
        self.release_inference_memory()
        self._revert_fp8_gfdm()
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.release_inference_memory()  # assign=True replaces the parameter tensors the copies were made from
        self._revert_fp8_gfdm()  # the checkpoint's bf16 weights load into the unconverted layers
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # --- construction ---------------------------------------------------------------------------------------
    def load_gidm_encoder(self, model: LatentActionModel, source: str | None = None) -> dict:
        """Copy the encoder side of a pretrained GIDM into the policy; returns (and logs) what was taken.

        Raises if any encoder tensor is missing or has another shape. The decoder is not used by the policy.
        """
        expected = self.gidm.state_dict()
        provided = model.encoder.state_dict()
        problems = [
            f"{k}: GIDM {tuple(provided[k].shape)} vs policy {tuple(v.shape)}"
            for k, v in expected.items()
            if k in provided and provided[k].shape != v.shape
        ]
        missing = sorted(set(expected) - set(provided))
        if problems or missing:
            raise CheckpointMismatchError(
                f"GIDM at {source} does not fit the policy: missing encoder tensors {missing}; shape mismatches "
                f"{problems}. The GIDM's num_patches must equal the GFDM feature grid (image_size / 16)^2."
            )
        self.gidm.load_state_dict(provided, strict=True)
        report = {
            "source": source,
            "loaded_tensors": sorted(provided),
            "loaded_parameters": sum(t.numel() for t in provided.values()),
            "unused_decoder_tensors": len(model.decoder.state_dict()),
        }
        logger.info(
            "GIDM encoder initialised from %s: %d tensors (%.1f M values); %d decoder tensors not used",
            source,
            len(provided),
            report["loaded_parameters"] / 1e6,
            report["unused_decoder_tensors"],
        )
        return report

    # --- save / load ----------------------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        super()._save_pretrained(save_directory, state_dict=state_dict)
        self.text.clip_tokenizer.save_pretrained(save_directory / TOKENIZER_DIRS["clip"])
        self.text.t5_tokenizer.save_pretrained(save_directory / TOKENIZER_DIRS["t5"])
        if self.codebook_restarts.steps:
            report = json.dumps(self.codebook_restarts.summary(), indent=1)
            (save_directory / CODEBOOK_REPORT_FILE).write_text(report + "\n")

    @classmethod
    def from_pretrained(
        cls, pretrained_name_or_path: str | Path, *, config: DeFIConfig | None = None, **kwargs
    ) -> "DeFIPolicy":
        """Load a saved DeFI policy from a folder or a Hub repo; needs nothing else (no GFDM folder).

        A ``config`` given here (``lerobot-train --resume`` passes the run's own) is completed with the
        architectures the saved ``config.json`` records (:func:`with_saved_architectures`)."""
        path = Path(pretrained_name_or_path)
        if not path.is_dir():
            path = Path(
                snapshot_download(
                    repo_id=str(pretrained_name_or_path),
                    revision=kwargs.get("revision"),
                    cache_dir=kwargs.get("cache_dir"),
                    token=kwargs.get("token"),
                    force_download=kwargs.get("force_download", False),
                    local_files_only=kwargs.get("local_files_only", False),
                    allow_patterns=PRETRAINED_FILES,
                )
            )
        if config is not None and (path / CONFIG_NAME).is_file():
            config = with_saved_architectures(config, json.loads((path / CONFIG_NAME).read_text()))
        return super().from_pretrained(path, config=config, pretrained_dir=path, **kwargs)

    @classmethod
    def _load_as_safetensor(cls, model: "DeFIPolicy", model_file: str, map_location: str, strict: bool):
        """Strict, readable loading: every tensor must be present with the right shape."""
        with safe_open(model_file, framework="pt", device=resolve_safetensors_device(map_location)) as f:
            # CPU tensors are views into the memory-mapped file at unaligned offsets: own copies keep BLAS on
            # its aligned kernels (same numbers as the policy that was saved) and release the file.
            stored = {}
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                tensor = f.get_tensor(key)
                stored[key] = tensor.clone() if tensor.device.type == "cpu" else tensor
        # Tied weights (e.g. T5's shared embedding) are stored once, under one of their names.
        state = dict(stored)
        tied: dict[int, list[str]] = {}
        for name, tensor in model.named_parameters(remove_duplicate=False):
            tied.setdefault(id(tensor), []).append(name)
        for names in tied.values():
            present = [n for n in names if n in stored]
            for name in names if present else []:
                state.setdefault(name, stored[present[0]])
        expected = model.state_dict()
        mismatched = [
            f"  {k}: checkpoint {tuple(state[k].shape)} vs this policy {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if mismatched or missing or unexpected:
            lines = [f"{model_file} does not match the DeFI policy built from this configuration:"]
            if mismatched:
                lines += [f"{len(mismatched)} tensor(s) with another shape:", *mismatched[:20]]
            if missing:
                lines.append(f"{len(missing)} tensor(s) missing from the checkpoint, e.g. {missing[:5]}")
            if unexpected:
                lines.append(f"{len(unexpected)} unknown tensor(s) in the checkpoint, e.g. {unexpected[:5]}")
            lines.append(
                "Was it saved with another config (action dim, cameras, chunk size, image size or model sizes)? "
                "Load it with its own config.json."
            )
            raise CheckpointMismatchError("\n".join(lines))
        model.load_state_dict(state, strict=True, assign=True)
        return model

    # --- LeRobot API ----------------------------------------------------------------------------------------
    def get_optim_params(self) -> list[nn.Parameter] | list[dict]:
        """The trainable parameters; two groups when ``gidm_lr`` gives the GIDM encoder its own rate."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        if self.config.gidm_lr is None:
            return trainable
        gidm = {id(p) for p in self.gidm.parameters()}
        return [
            {"params": [p for p in trainable if id(p) not in gidm]},
            {"params": [p for p in trainable if id(p) in gidm], "lr": self.config.gidm_lr},
        ]

    def reset(self) -> None:
        """Clear the action queue (call at every new episode / instruction)."""
        self._action_queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)
        self._queued_tasks: tuple[str, ...] | None = None

    def encode_observation(self, batch: dict[str, Tensor | list[str]]) -> dict[str, Tensor]:
        """Everything up to the action head's context: ``context (B, 1 + F*Q + K, D)``, the GIDM's
        ``indices (B, K)`` and VQ losses. In training, T5 runs with dropout if ``t5_dropout_in_training``."""
        t5_dropout = self.training and self.config.t5_dropout_in_training
        return self._encode(*self._tensor_inputs(batch, t5_dropout=t5_dropout))

    def _tensor_inputs(self, batch: dict, t5_dropout: bool = False) -> tuple[Tensor, ...]:
        """``(images (V*B, 3, H, W), feature noise, CLIP context, CLIP goal, T5 tokens, T5 mask)`` of a batch;
        the instructions come from the per-string cache (T5 is re-run, with dropout, when ``t5_dropout``)."""
        instructions = self.text(_tasks(batch), t5_dropout=t5_dropout)
        images = torch.cat([batch[key] for key in self.config.gfdm_camera_keys], dim=0)
        self._use_fp8_gfdm(images.device)
        return (
            images,
            self._feature_noise(images),
            instructions.clip_hidden,
            instructions.clip_pooled,
            instructions.t5_hidden,
            instructions.t5_mask,
        )

    def _feature_noise(self, images: Tensor) -> Tensor:
        """Noise half of the GFDM input ``(V*B, F, 4, h, w)``: fresh each call (official) or seeded."""
        generator = None
        if self.config.feature_noise_seed is not None:
            generator = torch.Generator(images.device).manual_seed(self.config.feature_noise_seed)
        latent = self.config.image_size // self.gfdm.latent_downsample
        shape = (images.shape[0], self.config.gfdm_num_frames, self.gfdm.latent_channels, latent, latent)
        return torch.randn(shape, generator=generator, device=images.device)

    def _encode(
        self,
        images: Tensor,
        feature_noise: Tensor,
        clip_hidden: Tensor,
        clip_pooled: Tensor,
        t5_hidden: Tensor,
        t5_mask: Tensor,
        vq_reduction: str = "mean",
    ) -> dict[str, Tensor]:
        """Tensor-only part of :meth:`encode_observation` (images of all GFDM cameras stacked on the batch);
        ``vq_reduction="none"`` gives the VQ losses per sample ``(B,)``."""
        cfg = self.config
        cameras = cfg.gfdm_camera_keys
        context = text_context_from_clip(clip_hidden, self.gfdm.cross_attention_dim)
        features = self.gfdm(images, context.repeat(len(cameras), 1, 1), noise=feature_noise)
        tokens = rearrange(features, "(v b) f c h w -> v b f (h w) c", v=len(cameras))
        video_in = torch.cat([tokens[cameras.index(k)] for k in cfg.video_former_camera_keys], dim=2)
        video_tokens = self.video_former(video_in)  # (B, F*Q, D)
        # (B, 2, N, C); integer picks, not a list index (which would put a CPU index tensor in a CUDA graph)
        camera_tokens = tokens[cameras.index(cfg.gidm_camera_key)]
        frames = torch.stack([camera_tokens[:, i] for i in cfg.gidm_frame_indices], dim=1)
        gidm_in = self.gidm_feature_proj(frames) + self.gidm_frame_embedding
        gidm = self.gidm(gidm_in, t5_hidden, t5_mask, loss_reduction=vq_reduction)
        action_context = self.action_head.encode_context(
            clip_pooled[:, None], video_tokens, gidm["latent_action_tokens"]
        )
        return {
            "context": action_context,
            "indices": gidm["indices"],
            "latents": gidm["latents"],
            "code_loss": gidm["code_loss"],
            "commitment_loss": gidm["commitment_loss"],
        }

    def forward(self, batch: dict[str, Tensor], reduction: str = "mean") -> tuple[Tensor, dict]:
        """Training loss ``L_action + L_code + commitment_weight * L_commit`` and its parts (batch means).

        ``reduction="mean"``: the scalar loss. ``reduction="none"`` (what ``lerobot-train`` asks for when sample
        weighting is on): one loss per sample, shape ``(B,)``: the sample's EDM action loss over its own valid
        (not padded) chunk steps, plus its own VQ terms: the code and commitment losses are means over the
        ``K x latent_dim`` values of that sample's latent-action tokens (each sample quantises its own tokens,
        so the terms split exactly; their batch mean is the scalar VQ loss). Without padding the mean of the
        per-sample losses is the scalar loss.
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        if ACTION not in batch:
            raise KeyError(f"DeFI training needs '{ACTION}' in the batch; got keys {sorted(batch)}")
        t5_dropout = self.training and self.config.t5_dropout_in_training
        inputs = self._tensor_inputs(batch, t5_dropout=t5_dropout)
        losses = self._compiled_training_losses or self._training_losses
        loss, action_loss, code_loss, commitment_loss, indices, latents = losses(
            *inputs, batch[ACTION], batch.get(f"{ACTION}_is_pad"), reduction
        )
        counts = code_counts(indices, self.config.gidm.codebook_size)
        if self.training:
            self.codebook_restarts.observe(counts, latents)
        return loss, {
            "action_loss": action_loss.mean().item(),
            "vq_code_loss": code_loss.mean().item(),
            "vq_commitment_loss": commitment_loss.mean().item(),
            **codebook_stats(counts),
        }

    def _training_losses(
        self,
        images: Tensor,
        feature_noise: Tensor,
        clip_hidden: Tensor,
        clip_pooled: Tensor,
        t5_hidden: Tensor,
        t5_mask: Tensor,
        actions: Tensor,
        action_is_pad: Tensor | None,
        reduction: str,
    ) -> tuple[Tensor, ...]:
        """Tensor-only part of :meth:`forward` (compiled by :meth:`compile_modules`): ``(loss, action loss, code
        loss, commitment loss, GIDM indices (B, K), GIDM latents)``, the losses scalars or ``(B,)`` by
        ``reduction``."""
        encoded = self._encode(
            images, feature_noise, clip_hidden, clip_pooled, t5_hidden, t5_mask, vq_reduction=reduction
        )
        action_loss = self.action_head.loss(actions, encoded["context"], action_is_pad, reduction=reduction)
        code_loss, commitment_loss = encoded["code_loss"], encoded["commitment_loss"]
        loss = action_loss + code_loss + self.config.gidm.commitment_weight * commitment_loss
        return loss, action_loss, code_loss, commitment_loss, encoded["indices"], encoded["latents"]

    def update(self) -> None:
        """Called by ``lerobot-train`` after every optimizer step: restarts unused GIDM codes every
        ``gidm_code_restart_steps`` steps (``policy/codebook_restart.py``)."""
        self.codebook_restarts.step(self.gidm.quantizer)

    @torch.no_grad()
    def predict_action_chunk(
        self, batch: dict[str, Tensor], noise: Tensor | None = None, compiled: bool = True, **kwargs
    ) -> Tensor:
        """Sample a chunk ``(B, chunk_size, action_dim)``; ``noise`` optional standard normal of that shape.
        ``compiled=False`` runs the policy's modules eagerly even after :meth:`compile_modules` (to check the
        compiled chunk against them)."""
        inputs = self._tensor_inputs(batch)
        if noise is None:
            shape = (inputs[3].shape[0], self.config.chunk_size, self.config.action_dim)
            noise = torch.randn(shape, device=inputs[0].device)
        inputs = (*inputs, noise)
        # A host-side check of the weights, which are copied only when they changed. Copies made anew (first chunk,
        # a parameter replaced) have new addresses: captured graphs read the old ones.
        weights = self._low_precision_weights
        if weights is not None and not self.training and weights.refresh(self):
            self._drop_cuda_graphs()
        with self._mixed_precision(inputs[0].device.type):
            if not compiled:
                with torch.compiler.set_stance("force_eager"):
                    return self._inference_chunk(*inputs).float()
            sample = (
                self._inference_chunk
                if self._compiled_sample is None or self.training
                else self._compiled_sample
            )
            return sample(*inputs).float()

    def _mixed_precision(self, device_type: str):
        """Autocast of the trainable parts at inference in the precision they were trained in (``dtype``
        bfloat16 / float16, as lerobot-train's accelerate autocast); the frozen GFDM keeps its own dtype."""
        dtype = AUTOCAST_DTYPES.get(self.config.dtype)
        return torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext()

    def _inference_chunk(self, *inputs: Tensor) -> Tensor:
        """:meth:`_sample_chunk` reading the low-precision weight copies (in eval mode with ``dtype`` bfloat16 /
        float16, after ``refresh``): the numbers autocast gives with the fp32 weights, without casting them."""
        weights = self._low_precision_weights
        if weights is None or self.training or not weights.ready:
            return self._sample_chunk(*inputs)
        return weights.run(self._sample_chunk, *inputs)

    def _sample_chunk(
        self, images, feature_noise, clip_hidden, clip_pooled, t5_hidden, t5_mask, noise
    ) -> Tensor:
        """Tensor-only inference path: context once, then the solver (compiled by :meth:`compile_modules`)."""
        context = self._encode(images, feature_noise, clip_hidden, clip_pooled, t5_hidden, t5_mask)["context"]
        return self.action_head.sample(context, noise=noise)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], noise: Tensor | None = None, **kwargs) -> Tensor:
        """Next action ``(B, action_dim)``: pops the queue, refilled with ``n_action_steps`` actions of a new
        chunk when empty or when the instruction changes."""
        tasks = tuple(_tasks(batch))
        if tasks != self._queued_tasks:
            self._action_queue.clear()
            self._queued_tasks = tasks
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch, noise=noise)[:, : self.config.n_action_steps]
            self._action_queue.extend(chunk.transpose(0, 1))
        return self._action_queue.popleft()


def _tasks(batch: dict) -> list[str]:
    """The batch's instructions as a list of strings (one per sample)."""
    if "task" not in batch:
        raise KeyError(
            "DeFI is language-conditioned and needs the instruction under 'task' (a LeRobotDataset's task string "
            f"or the env's task description); batch keys are {sorted(batch)}"
        )
    tasks = batch["task"]
    if isinstance(tasks, str):
        images = [v for k, v in batch.items() if k.startswith("observation.images.")]
        return [tasks] * (images[0].shape[0] if images else 1)
    return [str(t) for t in tasks]
