"""rlp.export: a trained run -> a bundle for the torch-free runtime (ONNX fp32/fp16, TensorRT), behind a parity gate.

Entry points: the ``rlp-export`` command (:mod:`rlp.export.cli`) and
:func:`rlp.export.bundle.export_bundle`. Modules:

- :mod:`~rlp.export.bicubic`: PyTorch's bicubic x2 as an exact fixed convolution;
- :mod:`~rlp.export.onnx_export`: graph preparation, torch.onnx export, fp16, checks;
- :mod:`~rlp.export.parity`: the gate on the run's held-out slices;
- :mod:`~rlp.export.tensorrt`: engines (imported only with ``--trt``);
- :mod:`~rlp.export.run`: reading a run folder.

Importing this package is cheap: torch and onnx load with the submodules.
"""
