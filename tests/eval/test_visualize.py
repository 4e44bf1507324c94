"""Reconstruction grids and curve PNGs, checked against an independent NumPy patchify."""
import json

import numpy as np
import pytest
from PIL import Image

from mimjax.train import pictures as visualize

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
P, S = 4, 16  # patch size, image size: a 4 x 4 grid of patches
MASKED = [0, 5, 10, 15]  # the diagonal patches


def make_batch(b=3, norm_pix=False, seed=0):
    """raw uint8 [b, S, S, 3], normalised images, the perfect prediction [b, N, p*p*3], mask."""
    raw = np.random.default_rng(seed).integers(0, 256, (b, S, S, 3), np.uint8)
    images = ((raw / 255.0 - MEAN) / STD).astype(np.float32)
    g = S // P
    target = images.reshape(b, g, P, g, P, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, P * P * 3)
    if norm_pix:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    mask = np.zeros((b, g * g), bool)
    mask[:, MASKED] = True
    return raw, images, target, mask


def cell(grid, row, col, size=S):
    return grid[row * size:(row + 1) * size, col * size:(col + 1) * size].astype(int)


def patch(img, i):
    r, c = divmod(i, S // P)
    return img[r * P:(r + 1) * P, c * P:(c + 1) * P]


@pytest.mark.parametrize("norm_pix", [False, True])
def test_perfect_prediction_reproduces_the_image(norm_pix):
    raw, images, pred, mask = make_batch(norm_pix=norm_pix)
    grid = visualize.reconstruction_grid(images, pred, mask, patch_size=P, norm_pix_loss=norm_pix)
    assert grid.shape == (3 * S, 4 * S, 3) and grid.dtype == np.uint8  # B < max_images, no gpa
    for i in range(3):
        original = cell(grid, i, 0)
        assert np.abs(original - raw[i]).max() <= 1
        assert np.abs(cell(grid, i, 2) - raw[i]).max() <= 1  # reconstruction
        np.testing.assert_array_equal(cell(grid, i, 3), original)  # pasted = original, exactly
        masked_input = cell(grid, i, 1)
        for k in range(16):
            want = 128 if k in MASKED else patch(original, k)
            np.testing.assert_array_equal(patch(masked_input, k), np.broadcast_to(want, (P, P, 3)))


def test_wrong_prediction_shows_in_reconstruction_and_only_masked_patches_are_pasted():
    _, images, pred, mask = make_batch()
    grid = visualize.reconstruction_grid(images, pred + 1.0, mask, patch_size=P, norm_pix_loss=False)
    original, recon, pasted = cell(grid, 0, 0), cell(grid, 0, 2), cell(grid, 0, 3)
    assert (recon != original).any()
    for k in range(16):
        want = patch(recon, k) if k in MASKED else patch(original, k)
        np.testing.assert_array_equal(patch(pasted, k), want)


def test_norm_pix_prediction_is_unnormalised_with_the_original_patch_stats():
    raw, images, _, mask = make_batch(b=1)
    pred = np.zeros((1, 16, P * P * 3), np.float32)  # predicts every patch at its own mean
    grid = visualize.reconstruction_grid(images, pred, mask, patch_size=P, norm_pix_loss=True)
    normalised = (raw[0] / 255.0 - MEAN) / STD
    for k in range(16):
        mu = patch(normalised, k).mean()  # one mean over the patch's pixels and channels
        want = np.clip(np.round((mu * STD + MEAN) * 255), 0, 255)
        np.testing.assert_allclose(patch(cell(grid, 0, 2), k), np.broadcast_to(want, (P, P, 3)), atol=1)


def test_max_images_gpa_column_and_mask_at_progress():
    _, images, pred, mask = make_batch(b=6)
    gpa = np.linspace(0, 1, 16)[None].repeat(6, 0)
    assert visualize.reconstruction_grid(images, pred, mask, patch_size=P, norm_pix_loss=False,
                                         max_images=2).shape == (2 * S, 4 * S, 3)
    grid = visualize.reconstruction_grid(images, pred, mask, patch_size=P, norm_pix_loss=False, gpa=gpa)
    assert grid.shape == (4 * S, 5 * S, 3)
    heat = cell(grid, 0, 4)
    assert not np.array_equal(patch(heat, 0), patch(heat, 15))  # g = 0 vs g = 1
    # The heatmap is the colour of g, not of the image: flat images show g alone.
    flat = np.zeros_like(images)
    heat = cell(visualize.reconstruction_grid(flat, pred, mask, patch_size=P, norm_pix_loss=False, gpa=gpa), 0, 4)
    assert len({patch(heat, k)[0, 0].tobytes() for k in range(16)}) > 8

    later = ~mask
    grid = visualize.reconstruction_grid(images, pred, mask, patch_size=P, norm_pix_loss=False,
                                         gpa=gpa, mask_at_progress=later, upscale=2)
    assert grid.shape == (4 * 2 * S, 6 * 2 * S, 3)
    last = cell(grid, 0, 5, size=2 * S)
    assert (last[0:2 * P, 2 * P:4 * P] == 128).all()  # patch 1 is masked later
    np.testing.assert_array_equal(last[0:2 * P, 0:2 * P], cell(grid, 0, 0, size=2 * S)[0:2 * P, 0:2 * P])


def test_shape_errors_name_the_argument():
    _, images, pred, mask = make_batch()
    kw = {"patch_size": P, "norm_pix_loss": False}
    with pytest.raises(ValueError, match="pred shape"):
        visualize.reconstruction_grid(images, pred[:, :5], mask, **kw)
    with pytest.raises(ValueError, match="mask shape"):
        visualize.reconstruction_grid(images, pred, mask[:, :5], **kw)
    with pytest.raises(ValueError, match="gpa shape"):
        visualize.reconstruction_grid(images, pred, mask, gpa=np.zeros((3, 4)), **kw)
    with pytest.raises(ValueError, match="mask_at_progress shape"):
        visualize.reconstruction_grid(images, pred, mask, mask_at_progress=mask[:1], **kw)
    with pytest.raises(ValueError, match="images shape"):
        visualize.reconstruction_grid(images[..., :2], pred, mask, **kw)
    with pytest.raises(ValueError, match="images shape"):
        visualize.reconstruction_grid(images, pred, mask, patch_size=5, norm_pix_loss=False)


def test_save_png_creates_directories_and_round_trips(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
    path = tmp_path / "a" / "b" / "x.png"
    visualize.save_png(str(path), img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    with pytest.raises(ValueError, match="uint8"):
        visualize.save_png(str(path), img.astype(np.float32))


def test_plot_curves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3 * s, "gpa_loss": None} for s in range(1, 20)]
    rows.append({"step": 5, "loss": 0.3, "lr": 5e-3, "gpa_loss": None})  # a resumed run re-logs step 5
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 20, "lo')
    visualize.plot_curves(str(path), str(tmp_path / "out" / "curves.png"))
    img = np.asarray(Image.open(tmp_path / "out" / "curves.png"))
    assert img.shape == (300, 2 * 400, 3)  # loss and lr; gpa_loss has no value
    blue = np.all(np.abs(img.astype(int) - (31, 119, 180)) <= 12, axis=-1)
    dark = img.max(-1) < 90  # text, ticks and axes
    for j in range(2):  # each panel: a drawn line; a title above it; tick labels left and below
        panel, blue_j, dark_j = img[:, j * 400:(j + 1) * 400], blue[:, j * 400:(j + 1) * 400], dark[:, j * 400:(j + 1) * 400]
        assert blue_j.sum() > 200, j
        assert dark_j[:28].sum() > 5, "no title"
        assert dark_j[-40:].sum() > 100, "no x tick labels / axis label"
        assert dark_j[:, :60].sum() > 100, "no y tick labels / axis label"
        assert panel.shape == (300, 400, 3)
    # the resumed step 5 keeps its last value (0.3 > 1/4): the loss curve rises there
    visualize.plot_curves(str(path), str(tmp_path / "one.png"), keys=("lr",), panel=(200, 160))
    assert np.asarray(Image.open(tmp_path / "one.png")).shape == (160, 200, 3)
    visualize.plot_curves(str(path), str(tmp_path / "none.png"), keys=("knn_top1",))
    assert np.asarray(Image.open(tmp_path / "none.png")).shape == (300, 400, 3)


def test_titles_band_names_every_column():
    grid = np.zeros((2 * 32, 6 * 32, 3), np.uint8)
    titles = visualize.column_titles(gpa=True, mask_at=1.0)
    assert titles == ["original", "masked input", "reconstruction", "recon. + visible", "GPA heatmap", "mask at progress 1.00"]
    out = visualize.with_titles(grid, titles)
    band = out.shape[0] - grid.shape[0]
    assert out.shape[1:] == grid.shape[1:] and band >= 12
    np.testing.assert_array_equal(out[band:], grid)  # the cells are untouched, below the band
    for j in range(6):  # every column's part of the band has dark text in it
        assert (out[:band, j * 32:(j + 1) * 32].max(-1) < 128).sum() > 5, titles[j]
    assert visualize.column_titles(gpa=False) == titles[:4]
    with pytest.raises(ValueError, match="5 columns"):
        visualize.with_titles(grid, titles[:5])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_config):
    """A 3-step GPA-MAE run (EMA teacher, 32 px images, 8 px patches: 16 patches)."""
    from mimjax.train import pretrain as train

    c = tiny_config(total_steps=3, log_every=1, checkpoint_every=3, masking=dict(strategy="gpa"),
                    teacher=dict(source="ema", block=1, head=-1))
    wd = str(tmp_path_factory.mktemp("run"))
    train.train(c, wd)
    return wd, c


def grey_patches(grid, row, col, cell_px, grid_n):
    """How many of the grid_n x grid_n patches of one cell are uniformly grey (128)."""
    c = cell(grid, row, col, cell_px)
    p = cell_px // grid_n
    return sum(bool((c[i * p:(i + 1) * p, j * p:(j + 1) * p] == visualize.GREY).all())
               for i in range(grid_n) for j in range(grid_n))


def test_visualize_command_writes_the_grid_and_curves(tiny_run, tmp_path):
    from mimjax import cli

    wd, c = tiny_run
    assert cli.main(["mimjax", "visualize", "--workdir", wd, "--out", str(tmp_path), "--num_images", "3"]) == 0
    png = np.asarray(Image.open(tmp_path / "reconstruction.png"))
    cell_px = 32 * (128 // 32)  # the 32 px images are magnified 4x
    # a title band, then 3 rows; original | masked | reconstruction | pasted | GPA heatmap | mask at progress 1
    band = png.shape[0] - 3 * cell_px
    assert png.shape[1:] == (6 * cell_px, 3) and 12 <= band <= 40
    assert (png[:band].max(-1) < 128).sum() > 50  # the titles are drawn
    grid = png[band:]
    for row in range(3):  # 75% of 16 patches are masked, shown grey; the original has none
        assert grey_patches(grid, row, 1, cell_px, 4) == 12
        assert grey_patches(grid, row, 5, cell_px, 4) == 12
        assert grey_patches(grid, row, 0, cell_px, 4) == 0
    curves = Image.open(tmp_path / "curves.png")
    assert curves.size[1] == 300 and curves.size[0] >= 400


def test_visualize_command_on_own_images_and_bad_input(tiny_run, tmp_path, capsys):
    from mimjax import cli

    wd, _ = tiny_run
    img = tmp_path / "mine.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)).save(img)
    out = tmp_path / "out"
    assert cli.main(["mimjax", "visualize", "--workdir", wd, "--out", str(out), "--images", str(img), "--progress", "0"]) == 0
    shape = np.asarray(Image.open(out / "reconstruction.png")).shape
    assert shape[1:] == (6 * 128, 3) and 128 + 12 <= shape[0] <= 128 + 40
    assert cli.main(["mimjax", "visualize", "--workdir", wd, "--out", str(out), "--progress", "1.5"]) == 2
    assert "--progress=1.5: expected a value in [0, 1]" in capsys.readouterr().err
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert cli.main(["mimjax", "visualize", "--workdir", wd, "--out", str(out), "--images", str(tmp_path / "broken.jpg")]) == 2
    assert "broken.jpg' is not a readable image" in capsys.readouterr().err
    assert cli.main(["mimjax", "visualize", "--workdir", str(tmp_path), "--out", str(out)]) == 2
    assert "has no config.json" in capsys.readouterr().err
