"""The model and what trains it: the LightningModule (:mod:`~pneumonia.models.classifier`), its
backbones and optimisers, the training callbacks and time budget, and the checkpoint it is
saved in and read back from (:mod:`~pneumonia.models.checkpoint`)."""
