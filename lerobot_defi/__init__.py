"""DeFI: disentangled forward (GFDM) and inverse (GIDM) dynamics pretraining for robot policies."""

import logging

__version__ = "0.1.0"

# diffusers 0.39 logs "Unable to import `torchao` Tensor objects" when a diffusers model is first imported in a
# process that has torchao >= 0.16 (the [fp8] extra): its list of torchao classes for loading torchao-quantized
# diffusers checkpoints is out of date. This package never loads such checkpoints, so the line is dropped.
logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").addFilter(
    lambda record: not record.getMessage().startswith("Unable to import `torchao` Tensor objects")
)
