"""`model.init_from`: a new run starts from a run directory, its official-MAE .pth export (with
decoder) or its timm export (encoder only), exactly where the source run ended; what the
source lacks keeps its fresh initialisation and is listed; a file of another model or a
missing one is a ConfigError before anything is written; a resumed run ignores the key."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax import interop
from mimjax import workdir as workdir_lib
from mimjax.schema import ConfigError
from mimjax.train import init_from, metrics, pretrain
from mimjax.train import step as step_lib

# Float32 transposes and reshapes only (no arithmetic) on the way out and in: the
# reconstructions agree to rounding at most; 1e-5 relative is the bound asserted.
RTOL = 1e-5
DECODER = "decoder_blocks, decoder_embed, decoder_norm, decoder_pred, mask_token"


# 3 steps of the tiny MAE (ViT: 32 px, patch 8, width 64, depth 2; decoder 32 x 2) at a learning
# rate that moves the source run far from its initialisation.
SOURCE = dict(total_steps=3, log_every=1, checkpoint_every=100, optimizer=dict(blr=1e-2))


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_config):
    """A tiny MAE trained 3 steps, and its exports: official MAE .pth (with decoder) and timm."""
    d = tmp_path_factory.mktemp("init_from")
    run = str(d / "source")
    pretrain.train(tiny_config(**SOURCE), run)
    files = {"mae": str(d / "mae_full.pth"), "timm": str(d / "vit.safetensors")}
    for fmt, path in files.items():
        interop.export_weights(run, fmt, path)
    return {"run": run, "params": workdir_lib.load_params(run), **files}


def start(cfg, workdir):
    """The model and the params a new run in `workdir` starts with (step 0, before any update)."""
    built = step_lib.build(cfg, 1000, workdir=workdir)
    state = jax.jit(built.init_state)(jax.random.key(7))
    assert int(state.step) == 0
    return built, state


def reconstruction(built, cfg, params):
    """The model's forward on a fixed batch with a fixed mask."""
    key = jax.random.key(123)
    images = jax.random.uniform(key, (4, cfg.model.img_size, cfg.model.img_size, 3))
    mask = step_lib.make_mask(cfg, key, None, built.encoder.num_patches, jnp.arange(4), 0.0)
    return np.asarray(built.model.apply({"params": params}, images, mask, progress=0.0, train=False)["pred"])


def leaves_equal(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b))


@pytest.mark.slow
def test_run_directory_and_mae_pth_start_where_the_source_ended(source, tmp_path, caplog, tiny_config):
    cfg = tiny_config(**SOURCE)
    built, _ = start(cfg, str(tmp_path / "unused"))
    want = reconstruction(built, cfg, source["params"])
    fresh = reconstruction(built, cfg, jax.jit(built.init_state)(jax.random.key(7)).params)
    assert not np.allclose(fresh, want, rtol=1e-2)  # the check below can fail

    cfg.model.init_from = source["run"]
    with caplog.at_level(logging.INFO, logger="mimjax"):
        built, state = start(cfg, str(tmp_path / "from_run"))
    assert leaves_equal(state.params, source["params"])  # bitwise: the checkpoint's params
    assert "run directory's checkpoint at step 3" in caplog.text and "freshly initialised" not in caplog.text
    np.testing.assert_array_equal(reconstruction(built, cfg, state.params), want)

    caplog.clear()
    cfg.model.init_from = source["mae"]
    with caplog.at_level(logging.INFO, logger="mimjax"):
        built, state = start(cfg, str(tmp_path / "from_pth"))
    assert "MAE state dict (encoder + decoder)" in caplog.text and "freshly initialised" not in caplog.text
    np.testing.assert_allclose(reconstruction(built, cfg, state.params), want, rtol=RTOL, atol=1e-6)
    assert not os.path.exists(tmp_path / "from_pth")  # checking wrote nothing


@pytest.mark.slow
def test_encoder_only_file_keeps_a_fresh_decoder_and_lists_it(source, tmp_path, caplog, tiny_config):
    cfg = tiny_config(**SOURCE, model=dict(init_from=source["timm"]))
    with caplog.at_level(logging.INFO, logger="mimjax"):
        _, state = start(cfg, str(tmp_path / "w"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"model.init_from: not in {source['timm']}, freshly initialised: {DECODER}"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL), state.params["encoder"],
                 source["params"]["encoder"])
    _, fresh = start(tiny_config(**SOURCE), str(tmp_path / "w"))  # same key, no init_from
    assert leaves_equal({k: v for k, v in state.params.items() if k != "encoder"},
                        {k: v for k, v in fresh.params.items() if k != "encoder"})


@pytest.mark.slow
def test_gpa_mae_from_mae_initialises_the_gpa_head_fresh(source, tmp_path, caplog, tiny_config):
    cfg = tiny_config(gpa=True, **SOURCE, model=dict(init_from=source["mae"]))
    with caplog.at_level(logging.INFO, logger="mimjax"):
        _, state = start(cfg, str(tmp_path / "w"))
    assert f"model.init_from: not in {source['mae']}, freshly initialised: gpa_blocks, gpa_norm, gpa_pred" \
        in caplog.text
    for k in ("encoder", "decoder_blocks", "decoder_pred", "mask_token"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL), state.params[k], source["params"][k])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL), state.ema_params,
                 source["params"]["encoder"])  # the EMA teacher starts from the loaded encoder
    _, fresh = start(tiny_config(gpa=True, **SOURCE), str(tmp_path / "w"))
    assert leaves_equal(state.params["gpa_blocks"], fresh.params["gpa_blocks"])

    # And back: a GPA-MAE run directory into an MAE drops the head, listed.
    loaded = init_from.select("W", "run", jax.tree.map(np.asarray, state.params), "mae", "mae",
                              start(tiny_config(**SOURCE), str(tmp_path / "w"))[1].params, "tiny")
    assert loaded.dropped == ("gpa_blocks", "gpa_norm", "gpa_pred") and loaded.fresh == ()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mae", "run"])
def test_another_model_or_a_missing_file_is_a_config_error_before_anything_is_written(source, tmp_path, kind, tiny_config):
    path = source[kind]
    wd = tmp_path / "w"
    with pytest.raises(ConfigError) as e:  # width 32 instead of 64
        pretrain.train(tiny_config(**SOURCE, model=dict(init_from=path, width=32, num_heads=4)), str(wd))
    msg = str(e.value)
    assert msg.startswith(f"config.model.init_from={path!r}: expected ") and "width 32" in msg
    assert "wrong shapes: " in msg and ("blocks.0.attn.proj.weight (64, 64) (expected (32, 32))" if kind == "mae"
                                        else "decoder_embed/kernel (64, 32) (expected (32, 32))") in msg, msg
    with pytest.raises(ConfigError, match="patch_embed"):  # patch 4 instead of 8
        pretrain.train(tiny_config(**SOURCE, model=dict(init_from=path, patch_size=4)), str(wd))
    with pytest.raises(ConfigError, match=r"init_from='/no/such.pth': expected .* \(it does not exist\)"):
        pretrain.train(tiny_config(**SOURCE, model=dict(init_from="/no/such.pth")), str(wd))
    assert not os.path.exists(wd)


@pytest.mark.slow
def test_train_starts_from_it_and_a_resumed_run_ignores_it(source, tmp_path, caplog, tiny_config):
    wd = str(tmp_path / "w")
    cfg = tiny_config(**SOURCE, model=dict(init_from=source["run"]))
    cfg.total_steps, cfg.optimizer.blr = 1, 0.0  # lr 0: the step leaves the weights as they started
    with caplog.at_level(logging.INFO, logger="mimjax"):
        pretrain.train(cfg, wd)
    assert "weights from the run directory's checkpoint at step 3" in caplog.text
    assert leaves_equal(workdir_lib.load_params(wd), source["params"])  # through the real (jitted) init

    caplog.clear()
    cfg.total_steps, cfg.model.init_from = 2, "/gone/mae.pth"  # changed and missing: ignored on resume
    with caplog.at_level(logging.INFO, logger="mimjax"):
        pretrain.train(cfg, wd)
    assert f"model.init_from=/gone/mae.pth is ignored: {wd} has a checkpoint" in caplog.text
    assert [r["step"] for r in metrics.read_metrics(os.path.join(wd, "metrics.jsonl"))] == [1, 2]


def test_files_without_training(tmp_path, tiny_config):  # fast: no run, state dicts of initialised models
    pytest.importorskip("torch", reason="writes .pth files (requirements-torch.txt)")
    from mimjax import export
    from mimjax.models import init_model

    def save(cfg, name):
        built = step_lib.build(cfg, 1000)
        params = jax.tree.map(np.asarray, init_model(built.model, jax.random.key(3)))
        path = str(tmp_path / name)
        export.save_state_dict(export.to_mae_state_dict(params, "vit_base_patch16", img_size=32), path, {})
        return path, params

    path, params = save(tiny_config(**SOURCE), "same.pth")
    _, state = start(tiny_config(**SOURCE, model=dict(init_from=path)), str(tmp_path / "w"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL), state.params, params)
    other, _ = save(tiny_config(**SOURCE, model=dict(decoder_depth=1)), "other.pth")
    with pytest.raises(ConfigError, match=r"decoder_blocks.*\(1 in all\)|missing keys: decoder_blocks/block_1"):
        start(tiny_config(**SOURCE, model=dict(init_from=other)), str(tmp_path / "w"))
    (tmp_path / "w.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"\(a file named \.pth"):
        start(tiny_config(**SOURCE, model=dict(init_from=str(tmp_path / "w.json"))), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
