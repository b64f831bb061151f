"""rlp's core layer: the contracts every package shares and the toolbox every command uses.

Imports numpy, scipy, nibabel and rich only, and nothing of rlp outside this package
(tests/project/test_layering.py). Training, export, the runtime and the bench import it; it
imports none of them. ARCHITECTURE.md describes the layers.
"""
