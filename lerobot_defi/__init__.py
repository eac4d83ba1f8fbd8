"""DeFI: disentangled forward (GFDM) and inverse (GIDM) dynamics pretraining for robot policies."""

__version__ = "0.1.0"
