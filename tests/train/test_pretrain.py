"""End-to-end pre-training on CPU: tiny configs of the real recipes, a few steps each."""
import json
import os
import signal

import jax
import numpy as np
import pytest
from PIL import Image

from mimjax.train import metrics
from mimjax.train import pretrain as train
from mimjax.train import step as step_lib
from mimjax.train.checkpoint import load_params


def read_jsonl(workdir):
    return metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))


@pytest.mark.slow
def test_gpa_mae_trains_and_writes_everything(tmp_path, tiny_config):
    c = tiny_config(gpa=True, total_steps=4)
    c.snapshot_every = 2
    train.train(c, str(tmp_path))
    rows = read_jsonl(tmp_path)
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("loss", "pixel_loss", "gpa_loss", "lr", "images_per_sec", "grad_norm", "n_hard", "n_soft", "n_random"):
        assert key in rows[-1]
    assert rows[-1]["gpa_loss"] > 0
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]
    assert os.path.exists(tmp_path / "snapshots" / "step_0000004.png")
    assert os.path.exists(tmp_path / "curves.png")
    assert json.load(open(tmp_path / "config.json"))["masking"]["strategy"] == "gpa"
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tb"))


@pytest.mark.slow
def test_resume_after_sigterm_equals_uninterrupted(tmp_path, monkeypatch, tiny_config):
    c = tiny_config(gpa=True, total_steps=6, log_every=1, checkpoint_every=100)
    train.train(c, str(tmp_path / "straight"))
    straight = load_params(str(tmp_path / "straight" / "checkpoints"))

    write = metrics.MetricWriter.write

    def write_then_preempt(self, step, scalars):  # a preemption notice arriving after step 2
        write(self, step, scalars)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(metrics.MetricWriter, "write", write_then_preempt)
    train.train(c, str(tmp_path / "resumed"))
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["2"]
    monkeypatch.setattr(metrics.MetricWriter, "write", write)
    train.train(c, str(tmp_path / "resumed"))
    resumed = load_params(str(tmp_path / "resumed" / "checkpoints"))
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)
    steps = [r["step"] for r in read_jsonl(tmp_path / "resumed")]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_checkpoint_teacher_from_an_mae_workdir(tmp_path, tiny_config, trained_run):
    c = tiny_config(gpa=True, total_steps=2, teacher=dict(source="checkpoint", path=trained_run),
                    model=dict(gpa_head=False))
    last = train.train(c, str(tmp_path / "gpa"))
    assert np.isfinite(last["loss"])


@pytest.mark.slow
def test_image_folder_with_corrupt_file_trains_and_counts_skip(tmp_path, caplog, tiny_config):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(folder / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    c = tiny_config(total_steps=2, masking=dict(progress="step"))
    c.data.source, c.data.folder = "folder", str(folder)
    train.train(c, str(tmp_path / "run"))
    assert "broken.jpg" in caplog.text


@pytest.mark.slow
def test_tfds_mock_data_trains(tmp_path, tiny_config):
    import tensorflow_datasets as tfds

    c = tiny_config(total_steps=2, masking=dict(progress="step"))
    c.data.source, c.data.name = "tfds", "imagenet2012"
    with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_CODE):
        last = train.train(c, str(tmp_path))
    assert np.isfinite(last["loss"])


def test_cli_config_error_is_one_line_and_starts_nothing(tmp_path, run_cli):
    out = run_cli("train", "--config", "configs/demo.py", "--workdir", str(tmp_path / "w"),
                  "--config.masking.mask_ratio=1.5")
    assert out.returncode == 2
    assert "config error: config.masking.mask_ratio=1.5: expected a fraction in (0, 1)" in out.stderr
    assert not (tmp_path / "w").exists()


def test_a_batch_of_another_shape_stops_the_run_instead_of_recompiling(tmp_path, monkeypatch, tiny_config):
    make = train.data.make_iterator

    def shrinking(*args, **kwargs):  # the pre-training iterator's third batch is half as big
        it, calls = make(*args, **kwargs), [0]
        inner = it._it

        class Shrink:
            def __next__(self):
                batch = next(inner)
                calls[0] += 1
                return {**batch, "image": batch["image"][: len(batch["image"]) // 2]} if calls[0] == 3 else batch

            get_state, set_state = inner.get_state, inner.set_state

        it._it = Shrink()
        return it

    monkeypatch.setattr(train.data, "make_iterator", shrinking)
    c = tiny_config(gpa=True, total_steps=5, log_every=1)
    with pytest.raises(step_lib.RecompilationError, match="compiled a second time"):
        train.train(c, str(tmp_path))
