import pytest

torch = pytest.importorskip("torch")

from rlp.train import models  # noqa: E402

# (layer, output shape (C, H, W), parameters) from the paper's table for a 1x256x256 input.
PAPER_TABLE = [
    ("Conv2d-1", (64, 128, 128), 640),
    ("LeakyReLU-2", (64, 128, 128), 0),
    ("Conv2d-3", (128, 64, 64), 73856),
    ("MaxPool2d-4", (128, 32, 32), 0),
    ("LeakyReLU-5", (128, 32, 32), 0),
    ("BatchNorm2d-6", (128, 32, 32), 256),
    ("Conv2d-7", (256, 16, 16), 295168),
    ("MaxPool2d-8", (256, 8, 8), 0),
    ("LeakyReLU-9", (256, 8, 8), 0),
    ("Conv2d-10", (512, 4, 4), 1180160),
    ("MaxPool2d-11", (512, 2, 2), 0),
    ("LeakyReLU-12", (512, 2, 2), 0),
    ("Conv2d-13", (1, 1, 1), 8193),
]


def test_paper_r_matches_the_layer_table():
    r = models.PaperR().eval()
    assert models.n_params(r) == 1_558_273
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for m in r.net]
    with torch.no_grad():
        y = r(torch.rand(2, 1, 256, 256))
    for h in hooks:
        h.remove()
    assert [s for _, s, _ in PAPER_TABLE] == shapes
    for (name, _, params), layer in zip(PAPER_TABLE, r.net):
        assert type(layer).__name__ == name.split("-")[0]
        assert sum(p.numel() for p in layer.parameters()) == params, name
    assert y.shape == (2, 1) and bool(((y > 0) & (y < 1)).all())  # Sigmoid-14


def test_paper_r_at_128_keeps_the_table_but_its_last_pool():
    r = models.PaperR(128).eval()
    assert models.n_params(r) == 1_558_273
    names = [type(m).__name__ for m in r.net]
    assert names == [n.split("-")[0] for n, _, _ in PAPER_TABLE if n != "MaxPool2d-11"]
    with torch.no_grad():
        assert r(torch.rand(2, 1, 128, 128)).shape == (2, 1)


@pytest.mark.parametrize("size", [96, 512])
def test_paper_r_refuses_other_sizes(size):
    with pytest.raises(ValueError, match="256x256"):
        models.PaperR(size)


@pytest.mark.parametrize("side,depth", [(48, 4), (16, 2), (64, 3)])
def test_generator_is_fully_convolutional_and_bounded(side, depth):
    g = models.UNetG(width=4, depth=depth, max_width=16).eval()
    with torch.no_grad():
        y = g(torch.rand(3, 1, side, side))
    assert y.shape == (3, 1, side, side)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_generator_uses_bicubic_upsampling_by_default():
    g = models.UNetG(width=4, depth=2)
    ups = [m for m in g.modules() if isinstance(m, models.Upsample)]
    assert len(ups) == 2 and all(u.mode == "bicubic" for u in ups)


def test_models_rebuild_from_their_arch():
    # (a non-default upsampling too: it changes no parameter, only what the model computes)
    for m in (models.UNetG(width=4, depth=2), models.UNetG(width=4, depth=2, upsample="bilinear", output="laplace"),
              models.PatchD(width=8, n_layers=2), models.CropR(16, width=4, n_down=2)):
        clone = models.build(m.arch)
        assert type(clone) is type(m)
        clone.load_state_dict(m.state_dict())  # same parameter layout
        x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(clone.eval()(x), m.eval()(x), rtol=0, atol=0)  # and the same function


def test_head_bias_starts_at_the_mean_target():
    r = models.CropR(16, width=4, n_down=2).eval()
    models.init_head_bias(r, 0.03)
    with torch.no_grad():
        y = r(torch.rand(8, 1, 16, 16))
    assert torch.allclose(y, torch.full_like(y, 0.03), atol=0.01)
