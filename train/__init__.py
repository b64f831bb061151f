"""rlp.train: data preparation, G/D/R models and training loops (needs the ``train`` extra: torch, h5py, nilearn)."""
