"""Evaluation as MAE and the GPA authors ran it: the classifier's trainable position
embedding (exported as learned, kept on import), the best of the evaluations every epoch,
LARS as MAE's util/lars.py, the linear probe's util/crop.py crop and the authors' `,gpa`
linear probe."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax import export, interop
from mimjax.configs import linprobe
from mimjax.data import augment
from mimjax.eval import config as classify_config
from mimjax.eval import finetune
from mimjax.models import posemb_sincos_2d, vit
from mimjax.train import metrics, optim
from mimjax.train.checkpoint import load_params
from test_finetune import classifier_config, tiny_workdir  # tests/eval is on sys.path


def test_the_classifier_trains_its_position_embedding_from_the_table_without_decay():
    enc = vit("vit_tiny_patch16", img_size=32, patch_size=8, width=32, depth=2, num_heads=2, learned_pos_embed=True)
    params = finetune.Classifier(enc, num_classes=3).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    pos = params["encoder"]["pos_embed"]  # [1, 1+N, D]
    np.testing.assert_allclose(pos[0], posemb_sincos_2d(4, 4, 32), atol=1e-7)
    assert not optim.decay_mask(params)["encoder"]["pos_embed"]  # MAE: in no_weight_decay
    assert finetune.lr_scales(params, 2, 0.5)["encoder"]["pos_embed"] == 0.5 ** 3  # layer 0
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    shifted = jax.tree.map(lambda a: a, params)
    shifted["encoder"]["pos_embed"] = pos + jax.random.normal(jax.random.key(2), pos.shape)
    model = finetune.Classifier(enc, num_classes=3)
    a, b = model.apply({"params": params}, x), model.apply({"params": shifted}, x)  # [2, 3]
    assert np.abs(a - b).max() > 1e-2 * np.abs(a).max()  # it is used


def numpy_mae_lars(params, grads_per_step, lrs, wd=0.05, momentum=0.9, trust=0.001):
    """MAE util/lars.py, line by line (the p.ndim > 1 leaves get decay and the trust ratio)."""
    p = {k: v.astype(np.float64).copy() for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in p.items()}
    for grads, lr in zip(grads_per_step, lrs):
        for k in p:
            dp = grads[k].astype(np.float64)
            if p[k].ndim > 1:
                dp = dp + wd * p[k]
                pn, un = np.linalg.norm(p[k]), np.linalg.norm(dp)
                q = trust * pn / un if pn > 0 and un > 0 else 1.0
                dp = dp * q
            mu[k] = momentum * mu[k] + dp
            p[k] = p[k] - lr * mu[k]
    return p


def test_lars_is_maes_util_lars_under_a_changing_lr():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(6, 4)).astype(np.float32), "bias": rng.normal(size=4).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(6)]
    lrs = [0.5, 1.0, 2.0, 4.0, 2.0, 1.0]  # warm-up then decay: where the order of lr and momentum matters
    want = numpy_mae_lars(params, grads, lrs)
    mask = lambda p: {"kernel": True, "bias": False}  # optim.decay_mask's rule: kernels only
    for tx, same in [(optim.mae_lars(lambda step: jnp.asarray(lrs)[step], weight_decay=0.05, mask=mask), True),
                     (optax_lars(lrs, mask), False)]:
        got, state = {k: jnp.asarray(v) for k, v in params.items()}, None
        state = tx.init(got)
        for g in grads:
            updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, got)
            got = jax.tree.map(lambda a, u: a + u, got, updates)
        close = all(np.allclose(got[k], want[k], rtol=1e-5, atol=1e-6) for k in want)
        assert close == same  # optax.lars applies the lr before its momentum: not MAE's update


def optax_lars(lrs, mask):
    import optax

    return optax.lars(lambda step: jnp.asarray(lrs)[step], weight_decay=0.05, weight_decay_mask=mask,
                      trust_ratio_mask=mask, momentum=0.9)


def torch_mae_crop(torch, height, width, scale, ratio=(3 / 4, 4 / 3)):
    """MAE util/crop.py RandomResizedCrop.get_params (torch's RNG), as released."""
    area = height * width
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
    log_ratio = torch.log(torch.tensor(ratio))
    aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    w, h = min(w, width), min(h, height)
    i = torch.randint(0, height - h + 1, size=(1,)).item()
    j = torch.randint(0, width - w + 1, size=(1,)).item()
    return i, j, h, w


@pytest.mark.parametrize("height,width", [(64, 64), (120, 40)])
def test_the_linear_probes_crop_draws_as_maes_util_crop(height, width):
    """The same distribution of boxes as MAE's code (4,000 draws each): the mean box side and
    the share clamped to the image's side; torchvision's draw (10 tries, then a centre crop)
    differs from it on a tall image."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scale, n = (0.08, 1.0), 4000
    theirs = np.array([torch_mae_crop(torch, height, width, scale) for _ in range(n)])  # [n, 4]
    ours = np.array([augment.crop_box(rng, height, width, scale, draw="mae") for _ in range(n)])
    tv = np.array([augment.crop_box(rng, height, width, scale) for _ in range(n)])
    for boxes in (ours, tv):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()
    for col, side in ((2, height), (3, width)):
        se = theirs[:, col].std() / math.sqrt(n)
        assert abs(ours[:, col].mean() - theirs[:, col].mean()) < 5 * se + 0.5
        assert abs((ours[:, col] == side).mean() - (theirs[:, col] == side).mean()) < 0.03
    if height != width:  # clamping makes full-width boxes common; torchvision retries instead
        assert (tv[:, 3] == width).mean() < (theirs[:, 3] == width).mean() - 0.1


def test_the_authors_linear_probe_recipe_validates(tmp_path, tiny_config):
    c = linprobe.get_config("gpa")
    assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.weight_decay, c.optimizer.blr) == ("sgd", 0.9, 0.0, 0.1)
    assert (c.batch_size, c.total_epochs, c.optimizer.warmup_epochs, c.data.crop) == (1024, 90, 10, "mae")
    c.init = tiny_workdir(tiny_config, tmp_path / "pre")
    classify_config.validate(c)
    assert linprobe.get_config().optimizer.name == "lars" and linprobe.get_config().data.crop == "mae"


@pytest.mark.slow
def test_finetune_reports_best_and_final_exports_the_learned_embedding_and_round_trips(tmp_path, tiny_config):
    """12 steps of 4 an epoch: 3 evaluations; timm loads the export with the same logits;
    import -> export of it gives back every tensor."""
    timm = pytest.importorskip("timm")
    import torch

    init = tiny_workdir(tiny_config, tmp_path / "pre")
    res = finetune.finetune(classifier_config(init, steps=12), None, str(tmp_path / "ft"))
    saved = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    tests = [r for r in metrics.read_metrics(str(tmp_path / "ft" / "metrics.jsonl")) if "test_top1" in r]
    assert [r["step"] for r in tests] == [4, 8, 12] and [r["epoch"] for r in tests] == [1.0, 2.0, 3.0]
    assert saved == res and res["evaluations"] == 3 and res["top1"] == tests[-1]["test_top1"]
    best = max(tests, key=lambda r: r["test_top1"])
    assert (res["best_top1"], res["best_epoch"], res["best_step"]) == (best["test_top1"], best["epoch"], best["step"])
    params = load_params(str(tmp_path / "ft" / "checkpoints"))
    pos = np.asarray(params["encoder"]["pos_embed"])
    assert np.abs(pos[0] - posemb_sincos_2d(4, 4, 32)).max() > 1e-6  # it trained

    n, _ = interop.export_weights(str(tmp_path / "ft"), "timm", str(tmp_path / "exp"))
    cfg = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert cfg["num_classes"] == 2 and cfg["global_pool"] == "avg"
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, **cfg["model_args"]).eval()
    from safetensors.numpy import load_file

    sd = load_file(str(tmp_path / "exp" / "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    np.testing.assert_array_equal(sd["pos_embed"], pos)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    enc = vit("vit_tiny_patch16", img_size=32, patch_size=8, width=32, depth=2, num_heads=2, learned_pos_embed=True)
    ours = finetune.Classifier(enc, num_classes=2).apply({"params": params}, x)
    with torch.no_grad():
        theirs = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)

    arch = dict(patch_size=8, width=32, depth=2, num_heads=2)
    back = export.from_torch_state_dict(sd, "vit_tiny_patch16", img_size=32, arch=arch)  # the head is dropped
    np.testing.assert_array_equal(back["encoder"]["pos_embed"], pos)
    again = export.to_timm_state_dict(back, "vit_tiny_patch16", img_size=32, global_pool="avg")
    assert set(again) == set(sd) - {"head.weight", "head.bias"} and n == len(sd)
    for k, v in again.items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
