"""k-NN evaluation during pre-training (eval.every) and the profiler window (profile.*):
rows at the right steps, bitwise the same trajectory with and without them, trace files
where TensorBoard's profile plugin reads them; their config checks."""
import glob
import os

import jax
import numpy as np
import pytest

from mimjax import workdir as workdir_lib
from mimjax.schema import ConfigError
from mimjax.train import config as config_lib
from mimjax.train import metrics
from mimjax.train import pretrain


# MAE, 2 blocks of width 64, 32 px, batch 8; k-NN on 200 labelled 25x25 faces / non-faces
# (shipped with scikit-image), the last batch padded: exercises the masking.
TINY = dict(total_steps=4, log_every=2, checkpoint_every=100,
            eval=dict(dataset="embedded_faces", num_train=24, num_test=12, batch_size=16, k=5))


@pytest.mark.slow
def test_knn_rows_profile_trace_and_the_same_final_weights(tmp_path, tiny_config):
    off = tiny_config(**TINY)
    pretrain.train(off, str(tmp_path / "off"))
    on = tiny_config(**TINY)
    on.eval.every = 2
    on.profile.start_step, on.profile.num_steps = 1, 2  # steps 2-3 traced
    pretrain.train(on, str(tmp_path / "on"))

    traces = glob.glob(str(tmp_path / "on" / "tb" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0  # where TensorBoard's profile plugin looks
    assert not (tmp_path / "off" / "tb" / "plugins").exists()

    a, b = workdir_lib.load_params(str(tmp_path / "off")), workdir_lib.load_params(str(tmp_path / "on"))
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))

    rows = metrics.read_metrics(str(tmp_path / "on" / "metrics.jsonl"))
    knn = [r for r in rows if "knn_top1" in r]
    assert [r["step"] for r in knn] == [2, 4]
    assert all(0.0 <= r["knn_top1"] <= 1.0 for r in knn)
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert not any("knn_top1" in r for r in metrics.read_metrics(str(tmp_path / "off" / "metrics.jsonl")))
    # TensorBoard has it too
    from test_writers import tb_scalars  # noqa: PLC0415 (tests/train is on sys.path)

    assert [s for s, _ in tb_scalars(tmp_path / "on" / "tb")["knn_top1"]] == [2, 4]


def test_knn_eval_matches_the_knn_command_math(tiny_config):
    """KnnEval's top-1 on a trained-free encoder equals knn_accuracy's on the same features
    (the padded rows are masked, not neighbours)."""
    from mimjax import parallel
    from mimjax.eval.knn import knn_accuracy
    from mimjax.train import knn_eval, step as step_lib

    c = tiny_config(**TINY)
    built = step_lib.build(config_lib.fill_missing(c), 64)
    abstract = jax.eval_shape(lambda: built.init_state(jax.random.key(0)))
    par = parallel.make(c.parallelism, abstract)
    state = jax.jit(lambda: built.init_state(jax.random.key(0)))()
    ev = knn_eval.KnnEval(c.eval, encoder=built.encoder, par=par, img_size=built.encoder.img_size)
    got = ev(0, state)["knn_top1"]
    (trf, trl), (tef, tel) = (ev.features(state.params["encoder"], ev._train), ev.features(state.params["encoder"],
                                                                                           ev._test))
    cat = lambda xs: np.concatenate([np.asarray(x) for x in xs])  # noqa: E731
    trl, tel, trf, tef = cat(trl), cat(tel), cat(trf), cat(tef)
    want = knn_accuracy(trf[trl >= 0], trl[trl >= 0], tef[tel >= 0], tel[tel >= 0], k=c.eval.k)["top1"] / 100
    assert ev.n == (24, 12) and (trl >= 0).sum() == 24 and (tel >= 0).sum() == 12
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("key, value, words", [
    ("writers", "jsonl,tensorbord", "tensorbord"),
    ("writers", "", "at least one"),
    ("wandb.mode", "offlin", "offline"),
    ("eval.every", -1, ">= 0"),
    ("eval.dataset", "faces", "embedded_faces, tfds:NAME, folder:PATH, idx:DIR or arrayrecord:PATH"),
    ("eval.batch_size", 3, "multiple"),
    ("eval.pool", "mean", "token or avg"),
    ("profile.num_steps", -2, ">= 0"),
])
def test_bad_monitoring_values_name_the_key(key, value, words, tiny_config):
    c = tiny_config(**TINY)
    c.eval.every = 2
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(ConfigError, match=f"config.{key}=") as e:
        config_lib.validate(c, num_devices=2)
    assert words in str(e.value)
