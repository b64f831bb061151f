"""Exact incremental scoring for predictors that read the whole slice (``input_kind`` ``"image"``).

Every model input of such a predictor is the same slice with one ``window`` x
``window`` box painted with ``geometry.fill``. A convolution's output can change
only inside the box's projective field, which stays small through the first
layers (the paper's R at 256/16/4: 9x9 of 128x128 after its first conv, 5x5 of
64x64 after its second, 3x3 of 32x32 after the first pool). Following Krypton
(Nakandala et al., SIGMOD 2019):

1. the ONNX graph is read as a *prefix*, a chain of local stages (a Conv,
   MaxPool, AveragePool or constant Pad, each followed by any number of
   elementwise nodes: activations, BatchNormalization, arithmetic with
   per-channel constants), and the *rest* of the network;
2. the prefix runs once on the unpainted slice, and every stage's input is kept;
3. for each window, each prefix stage is recomputed only on the region of its
   output that the box can change (grown stage by stage from the kernel,
   stride, padding and dilation in the graph), from an input crop with exactly
   the halo that region needs: the kept input, padded as the layer pads it
   (zeros, or -inf for a max-pool), with the window's recomputed region of the
   previous stage pasted in. The layer runs on the crop with its padding
   removed, so every value is the one the whole network computes;
4. the last recomputed region is pasted into a copy of the kept activation and
   the rest of the network runs on the batch of these.

A stage runs once per batch of windows, in one of three ways, whichever the work
estimate prefers. An ungrouped convolution can recompute only the outputs a box
really changes (a box's changed extent varies with its alignment to the
strides: 2 or 3 of the 3 recomputed rows after the paper's R's first pool),
either each from its gathered receptive field, as one matrix product over the
batch (``gemm``: a 1x1 convolution on im2col columns), or, since a convolution
is linear, as its kept output (before the elementwise nodes after it) plus the
change of its input times the weights of only those kernel taps that read a
changed input (``delta``: one matrix product per tap; deep in the network a
changed output reads a changed input through about half of its taps); the
region's other outputs are the kept map's. Any other layer runs on the batch's
crops side by side in one image, so that its work stays in large calls although each crop is small. numpy
moves whole pixels (channels last); a Transpose in each sub-model, which onnxruntime folds into its
own layout change, gives the layers their NCHW. The sub-models' thread pools do
not spin between calls (they take turns with numpy), and keep no memory arena.

Where to stop the prefix is chosen by an estimate of the work per window
(multiply-adds and copied elements) at every stage boundary. A graph this
module cannot reason about (its first node is not a local layer, control flow,
a weight that is not a constant, ...) is scored plainly by the plain scorer
it is given (:class:`~rlp.runtime.scorers.PlainScorer`), with a note saying
why; the answer is never approximate. Only numpy, onnx and onnxruntime are used.

Modules: :mod:`.graph` (reading the chain of local stages), :mod:`.plan`
(regions, crops, how each convolution is recomputed, where to stop),
:mod:`.submodels` (the ONNX pieces that run), :mod:`.scorer` (the
:class:`IncrementalScorer`, a :class:`~rlp.runtime.scorers.WindowScorer`).
"""

from .graph import BINARY, SPATIAL, UNARY, Stage, image_input, read_chain
from .plan import COPY_FLOPS, DELTA_MIN_CIN, HOWS, StagePlan, choose_split, plan_stages
from .scorer import BATCH, IncrementalScorer, read_model

__all__ = ["BINARY", "SPATIAL", "UNARY", "Stage", "image_input", "read_chain", "COPY_FLOPS", "DELTA_MIN_CIN", "HOWS",
           "StagePlan", "choose_split", "plan_stages", "BATCH", "IncrementalScorer", "read_model"]

