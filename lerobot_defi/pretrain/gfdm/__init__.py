"""Stage 1: the GFDM, Stable Video Diffusion fine-tuned on language-conditioned clips (``lerobot-defi-train-gfdm``).

``config`` (the flags), ``parts`` (SVD + CLIP to start from), ``objective`` (models on the device and the loss),
``trainer`` (set-up and loop), ``validation`` (validation loss, sample videos), ``export`` (the diffusers folder),
``clips`` (dataset options, clip indices), ``lerobot_source`` / ``vpp_source`` (where clips come from),
``clip_dataset`` (the datasets), ``latent_files`` / ``latent_cache`` (VAE latents on disk), ``sample_videos``
(video files).
"""
