"""Fine-tuning: layer-wise lr decay, weight-decay exemptions, mixup/cutmix, random erasing,
a short run that learns, resume, and the CLI."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax.eval import config as classify_config
from mimjax.eval import finetune
from mimjax.train import metrics
from mimjax.train.checkpoint import Checkpointer, load_params
from mimjax.train.config import ConfigError
from mimjax.models import init_model, model_from_config, vit


def tiny_workdir(tiny_config, path, width=32, depth=2):
    """A randomly initialised MAE encoder saved as a mimjax directory (what `mimjax import` writes)."""
    c = tiny_config(model=dict(width=width, depth=depth, num_heads=2))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(c.to_json_best_effort())
    ck = Checkpointer(os.path.join(path, "checkpoints"), async_save=False)
    ck.save(0, {"params": init_model(model_from_config(c.model), jax.random.key(0))}, {})
    ck.wait()
    ck.close()
    return str(path)


def classifier_config(init, steps=12):
    """The runlocal fine-tuning recipe, shorter."""
    c = classify_config.base_config()
    c.update_from_flattened_dict({"init": init, "data.source": "embedded_faces", "batch_size": 32,
                                  "eval_batch_size": 64, "total_epochs": -1, "total_steps": steps,
                                  "log_every": 1, "checkpoint_every": 4, "optimizer.blr": 8e-3,
                                  "optimizer.warmup_steps": 2})
    return c


def classifier_params(depth=2):
    model = finetune.Classifier(vit("vit_tiny_patch16", img_size=32, patch_size=8, width=32, depth=depth,
                                    num_heads=2), num_classes=3)
    return model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]


def flat(tree):
    return {"/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_layer_decay_multipliers_for_depth_2():
    scales = flat(finetune.lr_scales(classifier_params(), depth=2, layer_decay=0.5))
    # MAE param_groups_lrd with num_layers = depth + 1 = 3: scale = 0.5 ** (3 - layer_id).
    table = {"encoder/cls_token": 0.125, "encoder/patch_embed/": 0.125, "encoder/blocks/block_0/": 0.25,
             "encoder/blocks/block_1/": 0.5, "encoder/norm/": 1.0, "head/": 1.0}
    for name, scale in scales.items():
        want = [v for k, v in table.items() if name.startswith(k)]
        assert len(want) == 1, name
        assert scale == want[0], (name, scale)


def test_weight_decay_only_on_kernels_and_scaled_by_layer_decay():
    params = classifier_params()
    c = classify_config.base_config().optimizer
    c.weight_decay, c.layer_decay = 0.1, 0.5
    tx = finetune.make_optimizer(c, lambda step: 1.0, finetune.lr_scales(params, 2, 0.5))
    zeros = jax.tree.map(jnp.zeros_like, params)  # no gradient: only weight decay moves anything
    updates, _ = tx.update(zeros, tx.init(params), params)
    scales = flat(finetune.lr_scales(params, 2, 0.5))
    for name, u in flat(updates).items():
        p = flat(params)[name]
        if name.endswith("kernel"):
            np.testing.assert_allclose(u, -0.1 * scales[name] * p, rtol=1e-6, atol=1e-9)
        else:  # biases ([D] and the [H, hd] q/k/v ones), LayerNorm scales, cls token
            assert not np.any(u), name


def smooth(labels, c, s):
    y = np.full((len(labels), c), s / c)
    y[np.arange(len(labels)), labels] += 1 - s
    return y


@pytest.mark.parametrize("seed", range(4))
def test_mixup_matches_numpy(seed):
    x = np.random.default_rng(seed).normal(size=(6, 8, 8, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    out, targets, lam = finetune.mixup_cutmix(jax.random.key(seed), x, labels, 5, switch_prob=0.0, smoothing=0.1)
    lam = float(lam)
    assert 0 < lam < 1
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    y = smooth(labels, 5, 0.1)
    np.testing.assert_allclose(targets, lam * y + (1 - lam) * y[::-1], rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_pastes_a_box_and_corrects_lam(seed):
    x = np.random.default_rng(seed).normal(size=(4, 16, 12, 3)).astype(np.float32)
    labels = np.array([1, 0, 2, 1])
    out, targets, lam = map(np.asarray, finetune.mixup_cutmix(jax.random.key(seed), x, labels, 3, switch_prob=1.0,
                                                              smoothing=0.2))
    pasted = np.all(out == x[::-1], axis=-1) & np.any(x != x[::-1], axis=-1)  # [B, H, W]
    assert np.all((out == x) | (out == x[::-1]))
    box = pasted[0]
    ys, xs = np.nonzero(box)
    if len(ys):  # the pasted pixels form one rectangle, the same in every image
        rect = np.zeros_like(box)
        rect[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        np.testing.assert_array_equal(box, rect)
    np.testing.assert_array_equal(pasted[1], box)
    assert float(lam) == pytest.approx(1 - box.sum() / (16 * 12))
    y = smooth(labels, 3, 0.2)
    np.testing.assert_allclose(targets, lam * y + (1 - lam) * y[::-1], rtol=1e-5)


def test_mix_prob_zero_gives_smoothed_labels_only():
    x = np.ones((4, 8, 8, 3), np.float32) * np.arange(4, dtype=np.float32)[:, None, None, None]
    out, targets, lam = finetune.mixup_cutmix(jax.random.key(0), x, np.array([0, 1, 1, 0]), 2, prob=0.0)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_allclose(targets, smooth(np.array([0, 1, 1, 0]), 2, 0.1), rtol=1e-6)
    assert float(lam) == 1.0


@pytest.mark.parametrize("prob", [0.0, 0.25, 1.0])
def test_random_erasing_changes_the_expected_fraction(prob):
    images = jnp.full((400, 32, 32, 3), 5.0)  # noise never equals 5
    out = np.asarray(jax.jit(finetune.random_erase, static_argnums=2)(jax.random.key(1), images, prob))
    changed = np.any(out != 5.0, axis=-1)  # [B, H, W]
    erased = changed.any(axis=(1, 2))
    assert abs(erased.mean() - prob) < 0.06
    for m in changed[erased][:50]:
        ys, xs = np.nonzero(m)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert m.sum() == h * w  # one rectangle, all channels noise
        assert 0.015 <= h * w / 1024 <= 0.36  # area in (0.02, 1/3) of the image, up to rounding
        assert 0.3 / 1.5 <= h / w <= 1.5 / 0.3  # aspect in (0.3, 3.3), up to rounding


def test_config_errors_name_the_value(tmp_path, tiny_config):
    init = tiny_workdir(tiny_config, tmp_path / "pre")
    for key, value, words in [("optimizer.layer_decay", 1.5, "config.optimizer.layer_decay=1.5"),
                              ("augment.reprob", 2.0, "config.augment.reprob=2.0"),
                              ("pool", "max", "config.pool='max'"),
                              ("init", str(tmp_path), "config.init="),
                              ("optimizer.name", "adam", "config.optimizer.name='adam'")]:
        c = classifier_config(init)
        c.update_from_flattened_dict({key: value})
        with pytest.raises(ConfigError, match=re.escape(words)):
            finetune.finetune(c, None, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_finetune_learns_and_resumes_exactly(tmp_path, monkeypatch, tiny_config):
    init = tiny_workdir(tiny_config, tmp_path / "pre")
    c = classifier_config(init, steps=8)
    straight = finetune.finetune(c, None, str(tmp_path / "straight"))
    assert straight["top1"] > 60 and straight["num_test"] == 50  # 2 classes: chance is 50
    assert json.loads((tmp_path / "straight" / "finetune.json").read_text())["top1"] == straight["top1"]

    write = metrics.MetricWriter.write

    def crash_after_step_5(self, step, row):  # a crash after the checkpoint at step 4
        write(self, step, row)
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(metrics.MetricWriter, "write", crash_after_step_5)
    with pytest.raises(KeyboardInterrupt):
        finetune.finetune(c, None, str(tmp_path / "resumed"))
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["4"]
    monkeypatch.setattr(metrics.MetricWriter, "write", write)
    resumed = finetune.finetune(c, None, str(tmp_path / "resumed"))
    a, b = (load_params(str(tmp_path / d / "checkpoints")) for d in ("straight", "resumed"))
    jax.tree.map(np.testing.assert_array_equal, a, b)  # same batches, augmentation and drop path
    assert resumed["top1"] == straight["top1"]


@pytest.mark.slow
def test_finetune_cli_from_a_pretraining_workdir(tmp_path, trained_run, run_cli):
    out = run_cli("finetune", "--config", "configs/finetune.py:runlocal", "--workdir", trained_run,
                  "--out", str(tmp_path / "ft"), "--config.total_epochs=5")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert res["num_test"] == 50 and 0 <= res["top1"] <= 100 and res["steps"] == 20
    rows = metrics.read_metrics(str(tmp_path / "ft" / "metrics.jsonl"))
    assert [r["step"] for r in rows if "loss" in r] == [10, 20]
    assert [r["step"] for r in rows if "test_top1" in r] == [4, 8, 12, 16, 20]  # every epoch of 4 steps
