"""Reconstruction grids and curve PNGs, checked against an independent NumPy patchify."""
import json
import os

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


BAR = visualize.COLORBAR_PX


def test_titles_band_names_every_column_and_the_heatmap_gets_its_colour_scale():
    grid = np.zeros((2 * 32, 6 * 32, 3), np.uint8)
    titles = visualize.column_titles(gpa=True, mask_at=1.0)
    assert titles == ["original", "masked input", "reconstruction", "recon. + visible", "GPA heatmap", "mask at progress 1.00"]
    out = visualize.with_titles(grid, titles)
    band = out.shape[0] - grid.shape[0]
    assert out.shape[1:] == (grid.shape[1] + BAR, 3) and band >= 12
    # the cells are untouched below the band; the colour scale sits between the heatmap and the last column
    np.testing.assert_array_equal(out[band:, :5 * 32], grid[:, :5 * 32])
    np.testing.assert_array_equal(out[band:, 5 * 32 + BAR:], grid[:, 5 * 32:])
    np.testing.assert_array_equal(out[band:, 5 * 32:5 * 32 + BAR], visualize.colorbar(grid.shape[0]))
    assert (out[:band, 5 * 32:5 * 32 + BAR] == 255).all()  # no title over the scale
    for j in range(6):  # every column's part of the band has dark text in it
        x = j * 32 + (BAR if j == 5 else 0)
        assert (out[:band, x:x + 32].max(-1) < 128).sum() > 5, titles[j]
    no_gpa = visualize.column_titles(gpa=False)
    assert no_gpa == titles[:4]
    assert visualize.with_titles(grid[:, :4 * 32], no_gpa).shape[1] == 4 * 32  # no heatmap: no scale
    assert visualize.column_titles(gpa=False, mask_at=0.0, same_as_input=True)[-1] == \
        "mask at progress 0.00 (= masked input)"
    with pytest.raises(ValueError, match="5 columns"):
        visualize.with_titles(grid, titles[:5])


def viridis_like(v):
    """The heatmap's colormap, interpolated channel by channel with NumPy between its 5 stops."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
    x = np.linspace(0, 1, 5)
    return np.stack([np.interp(v, x, stops[:, c]) for c in range(3)], axis=-1)


def test_colour_scale_follows_the_colormap_from_1_at_the_top_to_0_at_the_bottom():
    h = 120
    bar = visualize.colorbar(h)
    assert bar.shape == (h, BAR, 3) and bar.dtype == np.uint8
    strip = bar[:, visualize.BAR_COLUMNS].astype(int)  # [h, 10, 3], every column of the strip alike
    assert (strip == strip[:, :1]).all() and strip.shape[1] >= 8
    want = viridis_like(1 - np.arange(h) / (h - 1))  # row r shows the score 1 - r / (h - 1)
    assert np.abs(strip[:, 0] - want).max() <= 2  # the LUT quantises scores to 1/255
    assert strip[0, 0].tolist() == [253, 231, 37] and strip[-1, 0].tolist() == [68, 1, 84]
    labels = bar[:, visualize.BAR_COLUMNS.stop + 1:]
    top, bottom, middle = labels[:14], labels[-14:], labels[30:h - 30]
    assert (top.max(-1) < 128).sum() > 5 and (bottom.max(-1) < 128).sum() > 5  # "1.0" and "0.0"
    assert (middle == 255).all()
    with pytest.raises(ValueError, match="too small"):
        visualize.colorbar(10)


def test_the_last_column_is_drawn_at_another_progress_than_the_input():
    assert [visualize.other_progress(t) for t in (0.0, 0.3, 0.49, 0.5, 0.8, 1.0)] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_config):
    """A 3-step GPA-MAE run (EMA teacher, 32 px images, 8 px patches: 16 patches), ending at
    progress 1.0 (t = step / steps), where the GPA mask at 1.0 is the input's own."""
    from mimjax.train import pretrain as train

    c = tiny_config(total_steps=3, log_every=1, checkpoint_every=3, masking=dict(strategy="gpa", progress="step"),
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
    # a title band, then 3 rows; original | masked | reconstruction | pasted | GPA heatmap | scale | mask at
    # progress 0 (the checkpoint is at the end of training: the input's mask is the one at progress 1)
    band = png.shape[0] - 3 * cell_px
    assert png.shape[1:] == (6 * cell_px + BAR, 3) and 12 <= band <= 40
    assert (png[:band].max(-1) < 128).sum() > 50  # the titles are drawn
    grid = np.concatenate([png[band:, :5 * cell_px], png[band:, 5 * cell_px + BAR:]], axis=1)
    for row in range(3):  # 75% of 16 patches are masked, shown grey; the original has none
        assert grey_patches(grid, row, 1, cell_px, 4) == 12
        assert grey_patches(grid, row, 5, cell_px, 4) == 12
        assert grey_patches(grid, row, 0, cell_px, 4) == 0
    assert not np.array_equal(cell(grid, 0, 1, cell_px), cell(grid, 0, 5, cell_px))
    # the run's own last snapshot (written by training at its end) likewise
    snap = np.asarray(Image.open(os.path.join(wd, "snapshots", "step_0000003.png")))
    band = snap.shape[0] - 4 * cell_px  # 4 images
    assert snap.shape[1] == 6 * cell_px + BAR
    np.testing.assert_array_equal(snap[band:, 5 * cell_px:5 * cell_px + BAR], visualize.colorbar(4 * cell_px))
    last = snap[band:, 5 * cell_px + BAR:]
    assert not np.array_equal(cell(snap[band:], 0, 1, cell_px), last[:cell_px])
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
    assert shape[1:] == (6 * 128 + BAR, 3) and 128 + 12 <= shape[0] <= 128 + 40
    assert cli.main(["mimjax", "visualize", "--workdir", wd, "--out", str(out), "--progress", "1.5"]) == 2
    assert "--progress=1.5: expected a value in [0, 1]" in capsys.readouterr().err
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert cli.main(["mimjax", "visualize", "--workdir", wd, "--out", str(out), "--images", str(tmp_path / "broken.jpg")]) == 2
    assert "broken.jpg' is not a readable image" in capsys.readouterr().err
    assert cli.main(["mimjax", "visualize", "--workdir", str(tmp_path), "--out", str(out)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_snapshot_titles_a_last_mask_equal_to_the_input_s_as_such():
    """Random masking (MAE) draws the same mask at every progress: the last column says so."""
    from types import SimpleNamespace

    from mimjax.train.step import snapshot_grid

    raw, images, pred, mask = make_batch()
    cfg, enc = SimpleNamespace(model=SimpleNamespace(norm_pix_loss=False)), SimpleNamespace(patch_size=P, img_size=S)
    other = mask.copy()
    other[:, 1] = True
    for late, same in ((mask, True), (other, False)):
        png = snapshot_grid(cfg, enc, images, dict(pred=pred, mask=mask, gpa=None, late_mask=late), mask_at=0.0)
        grid = visualize.reconstruction_grid(images, pred, mask, patch_size=P, norm_pix_loss=False,
                                             mask_at_progress=late, upscale=128 // S)
        want = visualize.with_titles(grid, visualize.column_titles(False, 0.0, same_as_input=same))
        np.testing.assert_array_equal(png, want)
        assert not np.array_equal(png, visualize.with_titles(grid, visualize.column_titles(False, 0.0,
                                                                                         same_as_input=not same)))
