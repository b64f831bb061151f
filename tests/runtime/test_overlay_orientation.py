"""Overlay orientation (#20): every panel's side letters and on-screen flips come from the input's affine.

Checked geometrically, not on pixels of a PNG: the voxel drawn at each edge of a panel is mapped through the
input's affine to world (RAS+ mm) coordinates, and the side it lands on must be the one its letter names.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlp.runtime.core.nifti import AXES, volume_from_array
from rlp.runtime.overlay import _box_on_screen, display_axes, to_screen


def _rot_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


AFFINES = {
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    "LAS": np.diag([-1.0, 1.0, 2.0, 1.0]),
    "LPI": np.diag([-0.8, -1.2, -1.0, 1.0]),
    "ARS (axes swapped)": np.array([[0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]),
    "LAS oblique 30 degrees": _rot_z(30) @ np.diag([-1.0, 1.0, 1.0, 1.0]),
    "PSL oblique": _rot_z(-20) @ np.array([[0, 0, -1.0, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]),
}


def _edges_in_world(vol, k: int, radiological: bool):
    """World coordinates of the voxels drawn at the middle of the left, right, top and bottom edges."""
    codes = tuple(c for j, c in enumerate(vol.axcodes()) if j != k)
    d = display_axes(codes, radiological)
    c = vol.data.shape[k] // 2
    idx = np.stack(np.indices(vol.data.shape), axis=-1)  # canonical (i, j, k) of every voxel
    panel = np.take(idx, c, axis=k)  # (n_a, n_b, 3)
    screen = np.stack([to_screen(panel[..., i], d) for i in range(3)], axis=-1)  # (rows, cols, 3): drawn where
    rows, cols = screen.shape[:2]
    at = {"left": screen[rows // 2, 0], "right": screen[rows // 2, cols - 1],
          "top": screen[0, cols // 2], "bottom": screen[rows - 1, cols // 2]}
    return d, {side: vol.voxel_to_world(ijk)[0] for side, ijk in at.items()}


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("radiological", [True, False])
def test_axial_panels_put_each_letter_on_its_side(name, radiological):
    vol = volume_from_array(np.zeros((11, 13, 9), np.float32), AFFINES[name])
    d, w = _edges_in_world(vol, AXES["axial"], radiological)
    # world x grows towards the patient's right; radiological: the patient's left on the picture's right
    if radiological:
        assert (d.left, d.right) == ("R", "L") and w["right"][0] < w["left"][0]
    else:
        assert (d.left, d.right) == ("L", "R") and w["right"][0] > w["left"][0]
    assert (d.top, d.bottom) == ("A", "P") and w["top"][1] > w["bottom"][1]  # anterior up


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_coronal_and_sagittal_panels_have_superior_up(name):
    vol = volume_from_array(np.zeros((11, 13, 9), np.float32), AFFINES[name])
    d, w = _edges_in_world(vol, AXES["coronal"], True)
    assert (d.left, d.right, d.top, d.bottom) == ("R", "L", "S", "I")
    assert w["right"][0] < w["left"][0] and w["top"][2] > w["bottom"][2]
    d, w = _edges_in_world(vol, AXES["sagittal"], True)  # seen from the patient's left: anterior on the left
    assert (d.left, d.right, d.top, d.bottom) == ("A", "P", "S", "I")
    assert w["left"][1] > w["right"][1] and w["top"][2] > w["bottom"][2]


def test_letters_follow_the_axes_whatever_order_they_come_in():
    assert display_axes(("R", "A")) == display_axes(("R", "A"), radiological=True)
    swapped = display_axes(("A", "L"))  # the panel's second axis is the left-right one: it runs across
    assert swapped.across == 1 and (swapped.left, swapped.right, swapped.top) == ("R", "L", "A")
    assert not display_axes(("L", "P")).flip_x and not display_axes(("L", "P")).flip_y
    assert display_axes(None).left == ""  # unknown orientation: no letters guessed


@pytest.mark.parametrize("codes", [("R", "A"), ("L", "P"), ("A", "L"), ("P", "S"), ("S", "R")])
@pytest.mark.parametrize("radiological", [True, False])
def test_the_top_window_box_is_drawn_round_its_voxels(codes, radiological):
    shape = (17, 12)
    a0, a1, b0, b1 = 3, 7, 5, 10  # the box covers voxels a in 3..6, b in 5..9
    inside = np.zeros(shape, bool)
    inside[a0:a1, b0:b1] = True
    d = display_axes(codes, radiological)
    screen = to_screen(inside, d)
    rows, cols = np.nonzero(screen)
    x, y, w, h = _box_on_screen((a0 - 0.5, b0 - 0.5, a1 - 0.5, b1 - 0.5), shape, d)
    assert (x, y) == (cols.min() - 0.5, rows.min() - 0.5)
    assert (x + w, y + h) == (cols.max() + 0.5, rows.max() + 0.5)
