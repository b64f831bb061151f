"""The incremental scorer: the kept activations of the unpainted slice, then per batch of windows each planned
stage recomputed on what its boxes change, and the rest of the network on the patched activations."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..backends import CheckedModel, ort_sessions
from ..core.errors import BadInput, Unavailable, one_line
from ..core.geometry import WindowGeometry, iter_batches
from ..core.kinds import InputKind
from ..core.manifest import REBUILD
from ..scorers import TARGET_TRANSFORMS, WindowScorer
from .graph import Stage, helper, image_input, onnx, read_chain, rest_nodes
from .plan import HOWS, StagePlan, choose_split, gemm_ok, grow, plan_stages, reach
from .submodels import TO_NCHW, TO_NHWC, pointwise, submodel, tap_products

#: windows per stage call (the plain path's batch does not apply); measured on the paper's R at 256: as fast as
#: 512 and about 110 MB less peak memory
BATCH = 256


def read_model(model: CheckedModel):
    """The ``onnx.ModelProto`` of a checked bundle model (the very bytes whose hash was checked)."""
    if onnx is None:
        raise Unavailable("method incremental needs the onnx package (pip install 'rlp[cpu]')")
    try:
        return onnx.load(str(model.path)) if model.external_data else onnx.load_model_from_string(model.data)
    except Exception as exc:
        raise BadInput(f"onnx cannot read {model.entry.file} ({exc}); {REBUILD}", model.bundle) from None


# --------------------------------------------------------------------------- scoring
class _Kept:
    """A kept map (rows, cols, channels) in a buffer with room after its pixels for a batch's recomputed ones.

    A window's map is the kept one with its recomputed region in place: each gather is one ``np.take`` of
    whole pixels from this buffer, after the batch's new pixels are copied into its tail (the kept pixels are
    copied once per image, not once per batch).
    """

    def __init__(self, a: np.ndarray):
        self.map = a
        self._n = a.shape[0] * a.shape[1]
        self._buf = np.empty((0, a.shape[2]), a.dtype)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.map.shape

    @property
    def dtype(self) -> np.dtype:
        return self.map.dtype

    def pick(self, second: np.ndarray, in_second: np.ndarray, at_second: np.ndarray, at_first: np.ndarray
             ) -> np.ndarray:
        """Pixels at flat indices ``at_first`` of the map, or of ``second`` (any shape, channels last) at flat
        indices ``at_second`` where ``in_second``."""
        ch = self.shape[2]
        m = second.size // ch
        if len(self._buf) < self._n + m:  # grown for the largest batch, then reused
            self._buf = np.empty((self._n + m, ch), self.dtype)
            self._buf[: self._n] = self.map.reshape(-1, ch)
        self._buf[self._n: self._n + m].reshape(second.shape)[...] = second  # one copy, whatever its strides
        return np.take(self._buf, np.where(in_second, self._n + at_second, at_first), axis=0)

    def gather(self, patch: np.ndarray, pr: np.ndarray, pc: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               win: np.ndarray) -> np.ndarray:
        """Pixels ``(rows, cols)`` of window ``win``'s map: this map with the window's ``patch`` (rows,
        windows, cols, channels) in place at ``(pr[win], pc[win])``.

        The index arrays broadcast together; the result has their shape plus the channels. One copy of whole
        pixels, whichever map each comes from.
        """
        (ph, n, pw), w = patch.shape[:3], self.shape[1]
        ir, ic = rows - pr[win], cols - pc[win]
        inside = (ir >= 0) & (ir < ph) & (ic >= 0) & (ic < pw)
        return self.pick(patch, inside, (ir * n + win) * pw + ic, rows * w + cols)


class _Refused(Exception):
    """onnxruntime could not build or run a part of the graph."""


@dataclass
class IncrementalScorer(WindowScorer):
    """Scores windows of one image-kind predictor by recomputing only what each box changes.

    Build it with :meth:`from_model`; ``plan`` is empty and ``note`` says why
    when the graph cannot be scored incrementally, and :meth:`score` then asks
    ``fallback`` (a plain scorer of the same model). ``latencies`` receives the
    seconds of every onnxruntime call.
    """

    geometry: WindowGeometry
    dtype: np.dtype
    plan: list[StagePlan] = field(default_factory=list)
    note: str = ""
    costs: list[float] = field(default_factory=list)
    transform: Callable[[np.ndarray], np.ndarray] = TARGET_TRANSFORMS["identity"]
    latencies: list[float] = field(default_factory=list)
    batch: int = BATCH
    fallback: WindowScorer | None = None  # scores plainly where there is no plan
    _cache: object = None
    _stages: list = field(default_factory=list)
    _pre: dict = field(default_factory=dict)  # delta stage index -> index of its convolution's output in the cache
    _rest: object = None

    @classmethod
    def from_model(cls, model, geometry: WindowGeometry, *, sessions: Callable | None = None,
                   threads: int | None = None, split: int | None = None, conv: str | None = None,
                   **options) -> "IncrementalScorer":
        """Read and plan ``model`` (an ``onnx.ModelProto`` mapping (B, 1, S, S) to (B, ...)) for ``geometry``.

        ``sessions`` makes an onnxruntime session from serialised ONNX bytes (a
        backend's: :func:`~rlp.runtime.backends.ort_sessions`); by default CPU
        sessions with ``threads`` threads. ``split`` forces the number of stages
        recomputed incrementally (at most what the graph allows); by default the
        cheapest by the work estimate. ``conv`` forces how convolutions are
        recomputed, ``"gemm"`` or ``"delta"`` (every ungrouped one) or
        ``"crops"``; by default each the cheapest by the estimate. ``options``:
        the dataclass's fields (``transform``, ``latencies``, ``batch``, ``fallback``).
        """
        if conv not in (None,) + HOWS:
            raise ValueError(f"conv must be None, 'gemm', 'delta' or 'crops', not {conv!r}")
        if onnx is None:
            raise Unavailable("incremental scoring needs the onnx package (pip install 'rlp[cpu]')")
        geometry = geometry.for_input(InputKind.IMAGE)
        inp = image_input(model.graph)
        elem = inp.type.tensor_type.elem_type if inp is not None else onnx.TensorProto.FLOAT
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        self = cls(geometry, dtype, **options)
        # measured: spinning pools of the 7 sub-models starved numpy and each other; arenas kept every peak, and a
        # memory pattern kept per input shape grew 10 MB a slice over a volume
        make = sessions or ort_sessions("ort-cpu", "fp32", threads, spinning=False, arenas=False)

        def session(m):
            try:
                return make(m.SerializeToString())
            except Exception as exc:  # onnxruntime's own exception types
                raise _Refused(one_line(exc)) from None

        stages, why = read_chain(model)
        if not stages:
            return self._plainly(f"is not possible for this model ({why})")
        try:
            return self._build(model, stages, session, split, conv)
        except _Refused as exc:  # say so and score plainly, never wrongly
            self.plan, self._stages = [], []
            return self._plainly(f"is not possible for this model (onnxruntime refused a part of it: {exc})")

    def _build(self, model, stages: list[Stage], session, split: int | None, conv: str | None) -> "IncrementalScorer":
        x0, s, dtype = stages[0].input, self.geometry.size, self.dtype
        probe = session(submodel(model, [n for st in stages for n in st.nodes], [(x0, [1, 1, s, s])],
                                  [st.output for st in stages]))
        try:
            outs = probe.run(None, {x0: np.zeros((1, 1, s, s), dtype)})
        except Exception as exc:  # onnxruntime's own exception types
            raise _Refused(one_line(exc)) from None
        shapes = [(1, s, s)] + [tuple(int(v) for v in o.shape[1:]) for o in outs]
        if any(len(sh) != 3 for sh in shapes):
            return self._plainly("is not possible for this model (a layer is not 2-D)")
        plans, why = plan_stages(stages, shapes, self.geometry)
        if conv is not None:
            plans = [replace(p, how=conv if gemm_ok(p.stage) else "crops") for p in plans]
        if not plans:
            return self._plainly(f"is not possible for this model ({why})")
        best, self.costs = choose_split(plans, shapes)
        if split is not None:
            best = max(0, min(int(split), len(plans)))
        if best == 0:
            return self._plainly("would not save work for this model (by the estimate of the work per window)")
        rest = rest_nodes(model.graph, plans[best - 1].stage.output)
        if rest is None:
            return self._plainly("is not possible for this model (the rest of the network reads more than the "
                                 "recomputed layers)")
        self.plan = plans[:best]
        last = self.plan[-1]
        outs = [p.stage.output for p in self.plan]
        for i, p in enumerate(self.plan):  # a delta stage adds the change to its convolution's kept output
            if p.how == "delta":  # (before the elementwise nodes after it)
                conv_out = p.stage.nodes[0].output[0]
                if conv_out not in outs:
                    outs.append(conv_out)
                self._pre[i] = outs.index(conv_out)
        self._cache = session(submodel(model, [n for p in self.plan for n in p.stage.nodes], [(x0, [1, 1, s, s])],
                                        outs, out_perm=TO_NHWC))
        for p in self.plan:  # a Pad alone needs no session: its crop is its recomputed region
            if p.how == "delta":
                st = p.stage
                elem = submodel(model, st.nodes[1:], [(st.nodes[0].output[0], [1, 1, "outputs", p.out_shape[0]])],
                                 [st.output], TO_NCHW, TO_NHWC) if len(st.nodes) > 1 else None
                self._stages.append((session(tap_products(model, st)), elem and session(elem)))
                continue
            if p.gemm:
                self._stages.append(session(pointwise(model, p.stage)))
                continue
            nodes = p.stage.crop_nodes()
            crop_in = [(p.stage.crop_input, [1, p.crop[0], "crops_x_width", p.in_shape[0]])]
            self._stages.append(session(submodel(model, nodes, crop_in, [p.stage.output], TO_NCHW, TO_NHWC))
                                if nodes else None)
        c, h, w = last.out_shape  # the rest reads (windows, rows, cols, channels)
        self._rest = session(submodel(model, rest, [(last.stage.output, ["batch", h, w, c])],
                                       [model.graph.output[0].name], in_perm=TO_NCHW))
        return self

    def _plainly(self, why: str) -> "IncrementalScorer":
        self.note = f"incremental scoring {why}: every window is scored plainly"
        return self

    # -- running
    def _run(self, sess, x: np.ndarray) -> list[np.ndarray]:
        return self._run_feeds(sess, {sess.get_inputs()[0].name: x})

    def _run_feeds(self, sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = sess.run(None, feeds)
        self.latencies.append(time.perf_counter() - t0)
        return out

    def kept(self, image: np.ndarray) -> tuple[list[_Kept], dict[int, np.ndarray]]:
        """The unpainted slice's activations, channels last: every stage's input, padded as that layer pads,
        then the last stage's output; and each delta stage's convolution output (by stage index)."""
        x = np.asarray(image, dtype=self.dtype)
        got = [a[0] for a in self._run(self._cache, x[None, None])]
        acts = [x[:, :, None]] + got[: len(self.plan)]
        out = []
        for p, a in zip(self.plan, acts):
            b0, b1, e0, e1 = p.pads
            out.append(np.pad(a, ((b0, e0), (b1, e1), (0, 0)), constant_values=np.asarray(p.stage.pad_value, a.dtype)))
        return [_Kept(a) for a in out + [acts[-1]]], {i: got[k] for i, k in self._pre.items()}

    def score(self, image: np.ndarray, boxes: np.ndarray, *, batch: int | None = None,
              on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """The predictor's scores (transformed) of the windows at ``boxes`` (top-left rows, cols) of ``image``.

        Each stage runs once per batch. A convolution the plan marks ``gemm`` computes only the outputs that
        really change, each from its gathered receptive field, as one matrix product; one marked ``delta``
        computes the same outputs as their kept values plus the input's change through the taps that read it;
        the rest of its region is the kept map's. Any other layer runs on one image: the batch's input crops side by
        side (each widened to a multiple of the stride), so that its work stays in large calls; the outputs between
        crops are never read. Arrays are (rows, windows, cols, channels).
        """
        if not self.plan:
            if self.fallback is None:
                raise ValueError(f"{self.note}, but this scorer was given no plain scorer to fall back on")
            return self.fallback.score(image, boxes, on_batch=on_batch)
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 2)
        pos, w = self.geometry.positions, self.geometry.window
        if not np.isin(boxes, pos).all():
            raise ValueError("incremental scoring is planned for the geometry's window positions only")
        image = np.asarray(image, dtype=self.dtype)
        kept, pre = self.kept(image)
        out = np.empty(len(boxes), dtype=np.float64)
        for sl in iter_batches(len(boxes), max(1, int(batch or self.batch))):
            r, c = boxes[sl, 0], boxes[sl, 1]
            n = len(r)
            under = image[(r[:, None] + np.arange(w))[:, :, None], (c[:, None] + np.arange(w))[:, None, :]]
            patch = np.where(self.geometry.paint_mask(under), self.geometry.fill, under).astype(self.dtype)
            patch = patch.transpose(1, 0, 2)[..., None]  # the painted box, (rows, windows, cols, 1)
            changed = [(r, r + w - 1), (c, c + w - 1)]  # what really differs from the kept maps, inclusive
            win = np.arange(n)
            for i, (p, sess, src) in enumerate(zip(self.plan, self._stages, kept)):
                st, (sr, sc) = p.stage, p.stage.stride
                r_out, _ = grow(r, patch.shape[0], st.kernel[0], sr, st.dilation[0], p.pads[0], p.out_shape[1],
                                 p.region[0])
                c_out, _ = grow(c, patch.shape[2], st.kernel[1], sc, st.dilation[1], p.pads[1], p.out_shape[2],
                                 p.region[1])
                changed_in, changed = changed, [reach(*changed[ax], st.kernel[ax], st.stride[ax],
                                                         st.dilation[ax], p.pads[ax], p.out_shape[1 + ax])
                                                for ax in range(2)]
                pr, pc = r + p.pads[0], c + p.pads[1]  # the patch in the padded input
                nxt = self.plan[i + 1].pads[:2] if i + 1 < len(self.plan) else (0, 0)  # of the next stage's input
                if p.how == "delta":
                    patch = self._delta(p, sess, src, pre[i], patch, pr, pc, r_out, c_out, changed_in, changed,
                                        kept[i + 1], nxt)
                elif p.gemm:
                    patch = self._recompute(p, sess, src, patch, pr, pc, r_out, c_out, changed, kept[i + 1], nxt)
                else:
                    patch = self._on_crops(p, sess, src, patch, pr, pc, r_out, c_out)
                r, c = r_out, c_out
            h, w_, _ = kept[-1].shape  # the rest reads (windows, rows, cols, channels): whole pixels move
            x = kept[-1].gather(patch, r, c, np.arange(h)[None, :, None], np.arange(w_)[None, None], win[:, None, None])
            y = self.transform(np.asarray(self._run(self._rest, x)[0]).astype(np.float32, copy=False))
            if not np.isfinite(y).all():
                raise BadInput("model produced non-finite value(s) (NaN/Inf); the bundle is broken")
            out[sl] = np.asarray(y, dtype=np.float64).reshape(n, -1)[:, 0]
            if on_batch is not None:
                on_batch(n)
        return out

    def _on_crops(self, p: StagePlan, sess, src: _Kept, patch: np.ndarray, pr: np.ndarray, pc: np.ndarray,
                  r_out: np.ndarray, c_out: np.ndarray) -> np.ndarray:
        """A ``crops`` stage's region: the batch's input crops (``src`` with ``patch`` at ``pr, pc``) side by side
        in one image, each widened to a multiple of the stride, through the stage (none: a Pad alone)."""
        (sr, sc), n = p.stage.stride, patch.shape[1]
        width = -(-p.crop[1] // sc) * sc
        rows = (r_out * sr)[:, None] + np.arange(p.crop[0])
        cols = np.minimum((c_out * sc)[:, None] + np.arange(width), src.shape[1] - 1)
        crop = src.gather(patch, pr, pc, rows.T[:, :, None], cols[None], np.arange(n)[None, :, None])
        if sess is None:
            return crop[:, :, : p.region[1]]
        y = self._run(sess, crop.reshape(1, p.crop[0], n * width, -1))[0][0]
        return y[:, (np.arange(n) * (width // sc))[:, None] + np.arange(p.region[1])]

    def _needed(self, p: StagePlan, r_out: np.ndarray, c_out: np.ndarray, changed: list):
        """Which outputs of each window's region really change: ``need`` (rows, windows, cols), its nonzero
        (row, window, col) indices, and the region's rows and cols (windows, size)."""
        (rh, rw) = p.region
        rows, cols = r_out[:, None] + np.arange(rh), c_out[:, None] + np.arange(rw)  # (windows, rh), (windows, rw)
        (r_lo, r_hi), (c_lo, c_hi) = changed
        need = ((rows >= r_lo[:, None]) & (rows <= r_hi[:, None])).T[:, :, None] \
            & ((cols >= c_lo[:, None]) & (cols <= c_hi[:, None]))[None]
        return need, np.nonzero(need), rows, cols

    def _paste(self, y: np.ndarray, need: np.ndarray, idx: tuple, rows: np.ndarray, cols: np.ndarray,
               base: _Kept, offset: tuple[int, int]) -> np.ndarray:
        """The region (rows, windows, cols, channels): ``y`` (the outputs at ``idx``) over the kept ``base``."""
        at = np.zeros(need.shape, np.int64)
        at[idx] = np.arange(len(idx[0]))
        return base.pick(y, need, at, (rows + offset[0]).T[:, :, None] * base.shape[1] + (cols + offset[1])[None])

    def _delta(self, p: StagePlan, sess, src: _Kept, pre: np.ndarray, patch: np.ndarray, pr: np.ndarray,
               pc: np.ndarray, r_out: np.ndarray, c_out: np.ndarray, changed_in: list, changed: list, base: _Kept,
               offset: tuple[int, int]) -> np.ndarray:
        """A ``delta`` stage's region: each output in ``changed`` is its kept pre-activation (``pre``) plus, for
        every kernel tap that reads an input in ``changed_in``, the tap's weights times the input's change
        (``patch`` at ``pr, pc`` minus the kept ``src``), then the elementwise nodes; the others are ``base``'s."""
        taps_sess, elem_sess = sess
        st, (ph, n, pw) = p.stage, patch.shape[:3]
        need, (i, b, j), rows, cols = self._needed(p, r_out, c_out, changed)
        if not len(i):
            return self._paste(np.empty((0, base.shape[2]), base.dtype), need, (i, b, j), rows, cols, base, offset)
        o_r, o_c = r_out[b] + i, c_out[b] + j
        under = src.map[(pr[:, None] + np.arange(ph)).T[:, :, None], (pc[:, None] + np.arange(pw))[None]]
        change = (patch - under).reshape(-1, patch.shape[-1])  # (ph, n, pw) pixels
        (r_lo, r_hi), (c_lo, c_hi) = changed_in
        feeds, sel = {}, []
        for k, (ki, kj) in enumerate(np.ndindex(*st.kernel)):
            ir = o_r * st.stride[0] - p.pads[0] + ki * st.dilation[0]  # the tap's input, unpadded
            ic = o_c * st.stride[1] - p.pads[1] + kj * st.dilation[1]
            m = np.flatnonzero((ir >= r_lo[b]) & (ir <= r_hi[b]) & (ic >= c_lo[b]) & (ic <= c_hi[b]))
            at = ((ir[m] + p.pads[0] - pr[b[m]]) * n + b[m]) * pw + ic[m] + p.pads[1] - pc[b[m]]
            feeds[f"t{k}"] = change[at]
            sel.append(m)
        acc = pre[o_r, o_c]  # a copy: fancy indexing
        for m, y in zip(sel, self._run_feeds(taps_sess, feeds)):
            acc[m] += y  # each output once per tap
        if elem_sess is not None:
            acc = self._run(elem_sess, acc.reshape(1, 1, len(acc), -1))[0].reshape(len(acc), -1)
        return self._paste(acc, need, (i, b, j), rows, cols, base, offset)

    def _recompute(self, p: StagePlan, sess, src: _Kept, patch: np.ndarray, pr: np.ndarray, pc: np.ndarray,
                   r_out: np.ndarray, c_out: np.ndarray, changed: list, base: _Kept,
                   offset: tuple[int, int]) -> np.ndarray:
        """A ``gemm`` stage's region (rows, windows, cols, channels): the outputs in ``changed`` computed from
        their receptive fields (in ``src`` with ``patch`` at ``pr, pc``), the others the kept output ``base``
        (padded by ``offset``)."""
        st = p.stage
        need, (i, b, j), rows, cols = self._needed(p, r_out, c_out, changed)
        (kh, kw), (sr, sc), (dr, dc) = st.kernel, st.stride, st.dilation
        taps = src.gather(patch, pr, pc, ((r_out[b] + i) * sr)[:, None, None] + (np.arange(kh) * dr)[:, None],
                       ((c_out[b] + j) * sc)[:, None, None] + np.arange(kw) * dc, b[:, None, None])
        y = self._run(sess, taps.reshape(1, 1, len(i), -1))[0].reshape(len(i), -1) if len(i) else \
            np.empty((0, base.shape[2]), base.dtype)
        return self._paste(y, need, (i, b, j), rows, cols, base, offset)

    def describe(self) -> dict:
        """What is recomputed per window, and the estimated work (FLOPs per window) against plain scoring."""
        if not self.plan:
            return {"incremental": False, "note": self.note}
        n = len(self.plan)
        return {"incremental": True, "split_after": self.plan[-1].stage.name,
                "stages": [{"layer": p.stage.name, "op": p.stage.op, "region": list(p.region),
                            "of": list(p.out_shape[1:]), "crop": list(p.crop),
                            "changed": [round(v, 2) for v in p.exact], "as": p.how}
                           for p in self.plan],
                "flops_per_window": self.costs[n], "plain_flops_per_window": self.costs[0]}
