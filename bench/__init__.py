"""rlp.bench: measures the R path against the full G path (speed, memory, fidelity, localisation)."""
