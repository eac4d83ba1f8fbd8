"""What both pretraining stages use: ``cli`` (command lines), ``sources`` (datasets), ``mixture`` (weighted
sampling), ``run_setup`` (accelerate, seeding), ``checkpoints``, ``metrics_log``, ``publishing`` (atomic folders,
model cards, Hub upload)."""
