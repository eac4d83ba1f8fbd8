"""Pretraining entry points for the forward (GFDM) and inverse (GIDM) dynamics models."""
