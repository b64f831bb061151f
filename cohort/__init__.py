"""rlp.cohort: heatmaps for whole cohorts of volumes, in local worker processes or on a Ray cluster.

Built on the torch-free runtime (:class:`rlp.runtime.Bundle` and ``rlp-heatmap``'s per-input code); it
never imports torch or the training, export or bench packages (tests/project/test_layering.py). Ray is an
optional dependency (the ``scale`` extra), imported only by the Ray engine.
"""
