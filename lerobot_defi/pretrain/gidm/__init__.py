"""Stage 2: the GIDM, a VQ latent-action model trained on frame pairs with instructions (``lerobot-defi-train-gidm``).

``config`` (the flags), ``frame_pairs`` (the datasets), ``features`` (frozen DINOv2 / T5), ``trainer`` (set-up and
loop), ``evaluation`` (losses across processes, validation), ``codebook`` (usage, dead-code reset), ``export`` (the
model folder), ``inspection`` (which pairs share a latent action).
"""
