"""The authors' released DeFI weights as folders of this package (``lerobot-defi-import-official``;
docs/method.md §1.2, §3.5, §3.6, §4.9, §8.16, §8.17, §8.19, §8.20).

One module per idea:

* ``checkpoints``: reading the official files safely (weights-only unpickler with inert placeholders);
* ``keymap``: the explicit official-name -> our-name map with shape checks;
* ``policy``: the Stage-3 policy + GFDM folder -> a self-contained DeFI policy folder;
* ``gidm``: the Stage-2 latent action model -> a ``LatentActionModel`` folder;
* ``gfdm``: the released SVD pipeline folder, checked as it is and optionally slimmed;
* ``report`` / ``cards``: the atomic output folder, the import report, the model cards;
* ``cli``: the command line.

Every official tensor is renamed through the key map with shape checks; an import refuses to write a model with a
tensor it could not fill, and reports official tensors it did not use.
"""
