"""What a person reads: reconstruction PNGs, curves, metrics.jsonl, TensorBoard, progress."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from mimjax import metrics, visualize
from mimjax.data import augment


def setup(norm_pix):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (3, 16, 16, 3), np.uint8)
    images = np.stack([augment.normalize(r) for r in raw])
    # Independent patchify: 4x4 grid of 4x4 patches, pixels in (row, col, channel) order.
    target = images.reshape(3, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(3, 16, 48)
    if norm_pix:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    mask = np.zeros((3, 16), bool)
    mask[:, [0, 5, 10, 15]] = True
    return raw, images, target, mask


@pytest.mark.parametrize("norm_pix", [True, False])
def test_grid_with_perfect_prediction(norm_pix):
    raw, images, pred, mask = setup(norm_pix)
    gpa = np.linspace(0, 1, 16)[None].repeat(3, 0)
    grid = visualize.reconstruction_grid(images, pred, mask, patch_size=4, norm_pix_loss=norm_pix, gpa=gpa,
                                         max_images=2)
    assert grid.shape == (2 * 16, 5 * 16, 3) and grid.dtype == np.uint8
    for i in range(2):
        cell = lambda c: grid[16 * i:16 * (i + 1), 16 * c:16 * (c + 1)].astype(int)
        assert np.abs(cell(0) - raw[i]).max() <= 1  # original
        masked_in = cell(1)
        assert (masked_in[0:4, 0:4] == 128).all() and (masked_in[4:8, 4:8] == 128).all()  # patches 0 and 5
        assert np.abs(masked_in[0:4, 4:8] - raw[i][0:4, 4:8]).max() <= 1  # patch 1 visible
        assert np.abs(cell(2) - raw[i]).max() <= 1  # reconstruction
        assert np.abs(cell(3) - raw[i]).max() <= 1  # pasted
        heat = cell(4)
        assert not np.array_equal(heat[0:4, 0:4], heat[12:16, 12:16])  # g = 0 vs g = 1


def test_grid_columns_and_shape_errors():
    _, images, pred, mask = setup(False)
    g = visualize.reconstruction_grid(images, pred, mask, patch_size=4, norm_pix_loss=False,
                                      mask_at_progress=~mask, upscale=2)
    assert g.shape == (3 * 32, 5 * 32, 3)
    assert (g[0:8, 4 * 32 + 8:4 * 32 + 16] == 128).all()  # patch 1 is masked in the later mask
    with pytest.raises(ValueError, match="pred shape"):
        visualize.reconstruction_grid(images, pred[:, :5], mask, patch_size=4, norm_pix_loss=False)


def test_metric_writer_jsonl_tensorboard_and_curves(tmp_path):
    w = metrics.MetricWriter(str(tmp_path))
    for step in (1, 2, 3):
        w.write(step, {"loss": 1.0 / step, "lr": np.float32(0.1), "gpa_loss": float("nan")})
    w.write_image(3, "recon", np.zeros((8, 8, 3), np.uint8))
    w.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows[1] == {"step": 2, "loss": 0.5, "lr": pytest.approx(0.1), "gpa_loss": None}
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tb"))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a run killed mid-line
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]
    visualize.plot_curves(str(tmp_path / "metrics.jsonl"), str(tmp_path / "curves.png"))
    img = np.asarray(Image.open(tmp_path / "curves.png"))
    assert img.shape == (200, 2 * 320, 3)  # loss and lr (gpa_loss is all null)
    assert (img != 255).any()


def test_disabled_writer_writes_nothing(tmp_path):
    w = metrics.MetricWriter(str(tmp_path / "w"), enabled=False)
    w.write(1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "w").exists()


def test_progress_bar_line():
    out = io.StringIO()
    bar = metrics.ProgressBar(100, stream=out, every_s=0)
    bar.update(10, images_per_sec=50.0, loss=0.5)
    bar.update(20, images_per_sec=55.5, loss=0.4)
    text = out.getvalue()
    assert "step 20/100" in text and "55.5 img/s" in text and "loss 0.4" in text and "ETA 0:00:" in text
