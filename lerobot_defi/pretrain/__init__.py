"""Pretraining of the forward (GFDM) and inverse (GIDM) dynamics models.

Entry points: ``train_gfdm`` (``lerobot-defi-train-gfdm``), ``train_gidm`` (``lerobot-defi-train-gidm``),
``gidm_inspect`` (``python -m``). Each trainer is ``<model>_config`` (flags), ``<model>_trainer`` (set-up and
loop), validation (``gfdm_validation`` / ``gidm_evaluation``), ``<model>_export`` (the published folder) and its
data module. Shared by both: ``cli`` (command lines), ``sources`` (datasets), ``mixture`` (weighted sampling),
``run_setup`` (accelerate, seeding), ``checkpoints``, ``metrics_log``, ``publishing`` (atomic folders, model cards,
Hub upload).
"""
