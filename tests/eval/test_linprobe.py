"""Linear probe: MAE's LARS step, the BatchNorm + linear head, a run on the embedded faces
that beats chance, and `mimjax eval linprobe` end to end."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_finetune import classifier_config, tiny_workdir

from mimjax.eval import config as classify_config
from mimjax.eval import linprobe


def mae_lars(params, grads_seq, lr, wd, momentum=0.9, trust=0.001):
    """MAE util/lars.py: for p.ndim > 1, dp = (g + wd p) * trust |p| / |g + wd p|; mu = m mu + dp;
    p -= lr mu (1-D parameters skip the decay and the trust ratio)."""
    params = {k: v.copy() for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in params.items()}
    for grads in grads_seq:
        for k, p in params.items():
            dp = grads[k].copy()
            if p.ndim > 1:
                dp = dp + wd * p
                pn, un = np.linalg.norm(p), np.linalg.norm(dp)
                dp = dp * (trust * pn / un if pn > 0 and un > 0 else 1.0)
            mu[k] = momentum * mu[k] + dp
            params[k] = p - lr * mu[k]
    return params


def test_lars_matches_mae():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(6, 3)).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)]
    c = classify_config.base_config().optimizer
    c.name, c.weight_decay = "lars", 0.01
    tx = linprobe.make_optimizer(c, 2.0)
    p, state = jax.tree.map(jnp.asarray, params), None
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    want = mae_lars(params, grads, lr=2.0, wd=0.01)
    for k in params:
        np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)


def test_probe_head_is_batchnorm_without_affine_and_a_small_linear():
    head = linprobe.LinearProbeHead(num_classes=10)
    v = head.init(jax.random.key(0), jnp.zeros((1, 512)))
    assert set(v["params"]) == {"head"}  # the BatchNorm has no scale / bias
    assert set(v["batch_stats"]["bn"]) == {"mean", "var"}
    assert abs(float(v["params"]["head"]["kernel"].std()) - 0.01) < 0.001
    assert not np.any(v["params"]["head"]["bias"])
    feats = jax.random.normal(jax.random.key(1), (256, 512)) * 3 + 5
    _, new = head.apply(v, feats, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(new["batch_stats"]["bn"]["mean"], 0.1 * feats.mean(0), rtol=1e-4)  # momentum 0.1


def test_linprobe_beats_chance_and_writes_its_json(tmp_path, tiny_config):
    init = tiny_workdir(tiny_config, tmp_path / "pre")
    c = classifier_config(init, steps=20)
    c.pool, c.model.drop_path = "token", 0.0
    c.optimizer.name, c.optimizer.blr, c.optimizer.weight_decay = "sgd", 3.2, 0.0
    res = linprobe.linprobe(c, None)
    assert res["num_test"] == 50 and res["num_train"] == 150 and res["num_classes"] == 2
    assert res["top1"] > 60  # faces vs non-faces on a random encoder's cls token: chance is 50
    assert json.loads((tmp_path / "pre" / "linprobe.json").read_text()) == res
    assert json.loads((tmp_path / "pre" / "linprobe" / "linprobe.json").read_text()) == res
    assert sorted(os.listdir(tmp_path / "pre" / "linprobe" / "checkpoints")) == ["16", "20"]


def test_cli_config_error_is_one_line(tmp_path, tiny_config, run_cli):
    init = tiny_workdir(tiny_config, tmp_path / "pre")
    out = run_cli("eval", "linprobe", "--config", "configs/linprobe.py:runlocal", "--workdir", init,
                  "--config.optimizer.layer_decay=0")
    assert out.returncode == 2
    assert "mimjax eval linprobe: config error: config.optimizer.layer_decay=0.0: expected a factor in (0, 1]" in out.stderr
    assert not (tmp_path / "pre" / "linprobe").exists()


@pytest.mark.slow
def test_eval_linprobe_cli_on_a_pretraining_workdir(trained_run, run_cli):
    out = run_cli("eval", "linprobe", "--config", "configs/linprobe.py:runlocal", "--workdir", trained_run)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == json.loads(open(os.path.join(trained_run, "linprobe.json")).read())
    assert res["num_test"] == 50 and res["steps"] == 60 and res["pool"] == "token"
    assert res["top1"] > 60
