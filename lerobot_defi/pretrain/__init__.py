"""Pretraining of the forward (GFDM, Stage 1) and inverse (GIDM, Stage 2) dynamics models.

Entry points: ``train_gfdm`` (``lerobot-defi-train-gfdm``) and ``train_gidm`` (``lerobot-defi-train-gidm``). One
folder per stage, one module per idea inside:

* ``gfdm/``: Stage 1, the video forward-dynamics model (config, parts, objective, trainer, validation, export,
  clips and their sources, latent files and cache, sample videos);
* ``gidm/``: Stage 2, the latent-action model (config, frame pairs, frozen features, trainer, evaluation, codebook,
  export, inspection: ``python -m lerobot_defi.pretrain.gidm.inspection``);
* ``shared/``: what both stages use (command lines, dataset sources, mixture sampling, run set-up, checkpoints,
  metrics log, publishing).
"""
