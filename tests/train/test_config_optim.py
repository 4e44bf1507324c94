import contextlib
import math
import os

import jax
import ml_collections
import pytest

from mimjax.train import schedule as schedule_lib
from mimjax.eval import config as classify_config
from mimjax.train import config as config_lib
from mimjax.train import optim
import numpy as np

from mimjax.export import to_mae_state_dict
from mimjax.models import init_mae, mae


def mae_lr(step, steps_per_epoch, lr, min_lr, warmup_epochs, epochs):
    """MAE util/lr_sched.adjust_learning_rate, with epoch = step / steps_per_epoch."""
    epoch = step / steps_per_epoch
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def test_lr_schedule_matches_mae():
    c = config_lib.base_config().optimizer
    c.min_lr = 1e-6
    spe, epochs, warm = 10, 30, 4
    fn = schedule_lib.lr_schedule(c, 512, epochs * spe, warm * spe)
    peak = 1.5e-4 * 512 / 256
    for s in [0, 1, 17, 39, 40, 41, 150, 299]:
        assert float(fn(s)) == pytest.approx(mae_lr(s, spe, peak, 1e-6, warm, epochs), rel=1e-5, abs=1e-12)
    no_warmup = schedule_lib.lr_schedule(c, 512, epochs * spe, 0)
    for s in [0, 1, 150, 299, 300]:
        assert float(no_warmup(s)) == pytest.approx(mae_lr(s, spe, peak, 1e-6, 0, epochs), rel=1e-5, abs=1e-12)
    assert float(schedule_lib.lr_schedule(c, 512, 40, 40)(40)) == pytest.approx(peak)  # all warm-up: no crash


def tiny_mae_params(**kw):
    return init_mae(mae("mae_vit_tiny_patch16", img_size=32, patch_size=8, depth=2, decoder_depth=2,
                        decoder_width=32, decoder_heads=4, **kw), jax.random.key(0))


def test_pretrain_weight_decay_is_maes_rule_on_the_official_names():
    """MAE / the GPA authors: timm `add_weight_decay` on MaskedAutoencoderViT, i.e. no decay
    for 1-D parameters and `.bias`, decay for all else (cls_token, mask_token included);
    the fixed pos_embed tables are not trained. The mask is written into the parameters
    (1 = decayed, 0 = not) and exported to the official names (q/k/v -> qkv)."""
    params = tiny_mae_params()
    marked = jax.tree.map(lambda decay, p: np.full(p.shape, float(decay), np.float32),
                          optim.pretrain_decay_mask(params), params)
    sd = to_mae_state_dict(marked, "vit_tiny_patch16", img_size=32)
    assert "cls_token" in sd and "mask_token" in sd and "blocks.0.attn.qkv.bias" in sd
    for name, value in sd.items():
        if name in ("pos_embed", "decoder_pos_embed"):  # requires_grad=False in MAE
            continue
        mae_decays = not (value.ndim == 1 or name.endswith(".bias"))
        assert np.all(value == float(mae_decays)), name


def test_simmim_and_classifier_weight_decay():
    params = tiny_mae_params()
    simmim = optim.pretrain_decay_mask(params, exempt=optim.PRETRAIN_EXEMPT["simmim"])
    assert not simmim["encoder"]["cls_token"] and simmim["mask_token"]  # SimMIM's ViT no_weight_decay
    clf = optim.decay_mask(params)  # fine-tune / linear probe: kernels only (tokens in no_weight_decay)
    assert clf["encoder"]["blocks"]["block_0"]["mlp"]["fc1"]["kernel"] and clf["encoder"]["patch_embed"]["kernel"]
    assert not clf["encoder"]["blocks"]["block_0"]["attn"]["query"]["bias"]  # [H, hd] bias: no decay
    assert not clf["encoder"]["norm"]["scale"] and not clf["encoder"]["cls_token"] and not clf["mask_token"]


def valid():
    c = config_lib.base_config()
    c.total_steps = 10
    c.batch_size = 8
    c.data.source = "embedded"
    return c


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c.masking, "mask_ratio", 1.2), r"config.masking.mask_ratio=1.2: expected a fraction in \(0, 1\)"),
    (lambda c: setattr(c, "batch_size", 6), r"config.batch_size=6: expected a positive multiple of the 4 devices the batch is split over"),
    (lambda c: setattr(c.masking, "strategy", "gpa"), r"config.teacher.source='none': expected a teacher"),
    (lambda c: (setattr(c.teacher, "source", "ema"), setattr(c.masking, "strategy", "gpa"),
                setattr(c.teacher, "block", 12)), r"config.teacher.block=12: expected a block index in \[0, 12\)"),
    (lambda c: setattr(c, "total_epochs", 3), "exactly one of total_steps / total_epochs"),
    (lambda c: setattr(c.parallelism, "fsdp", 3), r"config.parallelism: parallelism data x fsdp x model = \(-1, 3, 1\) does not fit 4 devices"),
    (lambda c: (setattr(c.parallelism, "mode", "pmap"), setattr(c.parallelism, "fsdp", 2)), "pmap replicates the state"),
    (lambda c: setattr(c.model, "img_size", 100), r"config.model.img_size=100: expected a positive multiple of the patch size 16"),
])
def test_validation_errors(change, match):
    c = valid()
    config_lib.validate(c, num_devices=4)
    change(c)
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c, num_devices=4)


def gpa_checkpoint_teacher(c, path, name="vit_base_patch16"):
    c.masking.strategy, c.teacher.source, c.teacher.path, c.teacher.name = "gpa", "checkpoint", path, name


@pytest.mark.parametrize("change, match", [
    (lambda c, tmp: gpa_checkpoint_teacher(c, ""),
     r"config.teacher.path='': expected the path of a teacher checkpoint"),
    (lambda c, tmp: gpa_checkpoint_teacher(c, "/nonexistent/x"),
     r"config.teacher.path='/nonexistent/x': expected an existing path"),
    (lambda c, tmp: gpa_checkpoint_teacher(c, str(tmp)), r"config.teacher.path='.*': not a mimjax run directory"),
    (lambda c, tmp: gpa_checkpoint_teacher(c, str(tmp / "weights.safetensors"), "vit_huge_patch14"),
     r"config.teacher.path='.*weights.safetensors': expected a teacher with the student's patch size 16 "
     r"\(the vit_huge_patch14 teacher has 14\)"),
    (lambda c, tmp: (setattr(c.data, "source", "folder"), setattr(c.data, "folder", "/nonexistent/images")),
     r"config.data.folder='/nonexistent/images': expected an existing directory of images"),
    (lambda c, tmp: (setattr(c.eval, "every", 5), setattr(c.eval, "dataset", "folder:/nonexistent/labelled")),
     r"config.eval.dataset='folder:/nonexistent/labelled': expected an existing directory of class folders"),
])
def test_preflight_errors_name_what_the_run_cannot_read(change, match, tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    c = valid()
    change(c, tmp_path)
    config_lib.validate(c, num_devices=4)  # the config itself is fine
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.preflight(c)


def test_preflight_needs_wandb_installed_for_its_writer(monkeypatch):
    import importlib.util

    c = valid()
    c.writers = "jsonl,wandb"
    config_lib.validate(c, num_devices=4)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(config_lib.ConfigError, match=r"config.writers='jsonl,wandb': expected wandb installed"):
        config_lib.preflight(c)


class IOAttempt(BaseException):  # not an Exception: no `except Exception` in the code under test swallows it
    pass


@contextlib.contextmanager
def no_io():
    """Every file-system and network access of this process raises IOAttempt inside."""
    import builtins
    import io
    import socket

    def refuse(*args, **kwargs):
        raise IOAttempt(args[:1])

    with pytest.MonkeyPatch.context() as mp:
        for owner, name in [(os, "stat"), (os, "lstat"), (os, "listdir"), (os, "scandir"), (os, "open"),
                            (os, "access"), (builtins, "open"), (io, "open"), (socket, "getaddrinfo"),
                            (socket, "create_connection"), (socket.socket, "connect")]:
            mp.setattr(owner, name, refuse)
        with pytest.raises(IOAttempt):  # the guard itself works
            os.path.isdir("/")
        yield


@pytest.mark.parametrize("teacher_path", ["/nonexistent/teacher", "gs://nonexistent-bucket/teacher"])
def test_validate_reads_no_file_and_no_network_and_preflight_does(teacher_path):
    c = valid()
    c.masking.strategy, c.teacher.source, c.teacher.path = "gpa", "checkpoint", teacher_path
    c.data.source, c.data.folder = "folder", "/nonexistent/images"
    c.eval.every, c.eval.dataset = 5, "folder:/nonexistent/labelled"
    config_lib.validate(valid(), num_devices=4)  # loads the modules validate imports when first called
    with no_io():
        config_lib.validate(c, num_devices=4)  # nothing it could complain about without reading
        with pytest.raises(IOAttempt):
            config_lib.preflight(c)


def test_preflight_passes_what_exists(tmp_path):
    c = valid()
    c.masking.strategy, c.teacher.source = "gpa", "ema"
    c.data.source, c.data.folder = "folder", str(tmp_path)
    c.eval.every, c.eval.dataset = 5, f"folder:{tmp_path}"
    config_lib.validate(c, num_devices=4)
    config_lib.preflight(c)


def test_unknown_key_and_old_config():
    c = valid()
    with c.unlocked():
        c.model.widht = 3
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key config.model.widht \(did you mean "
                                                     r"config.model.width\?\)"):
        config_lib.validate(c)
    old = valid()
    with old.unlocked():
        del old.masking["progress"]
    with pytest.raises(config_lib.ConfigError, match="lacks key"):
        config_lib.validate(old)
    filled = config_lib.fill_missing(old)
    config_lib.validate(filled)
    assert filled.masking.progress == "epoch" and filled.total_steps == 10


@pytest.mark.parametrize("spec", ["mae.py:vit_base_patch16", "mae.py:vit_huge_patch14", "gpa_mae.py:vit_base_patch16",
                                  "gpa_mae.py:vit_base_patch16,feature", "gpa_mae.py:vit_base_patch16,feature_early",
                                  "gpa_mae.py:vit_small_patch16,runlocal", "finetune.py:vit_base_patch16,gpa",
                                  "mae.py:vit_tiny_patch16,runlocal", "demo.py", "demo.py:mae"])
def test_shipped_configs_validate(spec, tmp_path):
    import importlib.util
    import os
    path, _, arg = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("cfg", os.path.join(os.path.dirname(__file__), "..", "..", "configs", path))
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    c = mod.get_config(arg or None)
    if path == "finetune.py":
        c.init = str(tmp_path)
        (tmp_path / "config.json").write_text("{}")
        (tmp_path / "checkpoints").mkdir()
        classify_config.validate(c, num_devices=1)
        return
    if c.teacher.source == "checkpoint":
        c.teacher.path = str(tmp_path)
    config_lib.validate(c, num_devices=1)
    assert isinstance(c, ml_collections.ConfigDict)


def test_gpa_recipes_are_the_authors_runs():
    """docs/method.md §4-§5: "teacher" = soft 0.3 -> 0, no head; "teacher + feature" = the head with
    its late start and a constant soft share of 0.3; ",feature_early" is ours; the GPA
    authors fine-tune with layer decay 0.8 (MAE's ViT-B recipe: 0.65)."""
    import importlib.util
    import os

    def recipe(path, arg):
        spec = importlib.util.spec_from_file_location("cfg", os.path.join(os.path.dirname(__file__), "..", "..",
                                                                          "configs", path))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.get_config(arg)

    teacher = recipe("gpa_mae.py", "vit_base_patch16")
    assert (teacher.masking.hard, teacher.masking.soft, teacher.model.gpa_head) == ((0.0, 0.5), (0.3, 0.0), False)
    feature = recipe("gpa_mae.py", "vit_base_patch16,feature")
    assert feature.model.gpa_head and feature.model.gpa_head_late_start and tuple(feature.masking.soft) == (0.3, 0.3)
    ours = recipe("gpa_mae.py", "vit_base_patch16,feature_early")
    assert ours.model.gpa_head and not ours.model.gpa_head_late_start and tuple(ours.masking.soft) == (0.3, 0.0)
    for c in (teacher, feature, ours):
        c = config_lib.fill_missing(c)  # the teacher block / head, left to the ViT-B teacher: the authors' 9 and 11
        assert (c.total_epochs, c.optimizer.warmup_epochs, c.batch_size, c.teacher.block, c.teacher.head) == (
            200, 20, 4096, 9, 11)
    with pytest.raises(ValueError, match="late_head"):
        recipe("gpa_mae.py", "vit_base_patch16,late_head")  # renamed: no silent fallback
    assert recipe("finetune.py", "vit_base_patch16,gpa").optimizer.layer_decay == 0.8
    assert recipe("finetune.py", "vit_base_patch16").optimizer.layer_decay == 0.65


def test_recipe_flags_are_checked():
    from mimjax.train import recipes

    assert recipes.parse("vit_small_patch16,feature,runlocal", known=("feature",)) == (
        "vit_small_patch16", {"feature", "runlocal"})
    assert recipes.parse(None, known=()) == ("vit_base_patch16", set())
    with pytest.raises(ValueError, match=r"\['featrue'\] in 'vit_base_patch16,featrue': expected any of"):
        recipes.parse("vit_base_patch16,featrue", known=("feature",))


def fake_run(path, **model):
    """A run directory as far as `preflight` reads it: config.json's model section and a finalised step."""
    import json

    (path / "checkpoints" / "1").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": model}))
    return str(path)


def test_teacher_block_and_head_follow_the_teacher_unless_set(tmp_path):
    """Left unset, teacher.block / teacher.head are the authors' block 9 and head 11 of a ViT-B
    teacher, and three quarters deep / the last head of any other; set, they are kept."""
    from mimjax.configs import gpa_mae, mae, simmim

    for c in (gpa_mae.get_config("vit_base_patch16"), gpa_mae.get_config("vit_base_patch16,ema"),
              simmim.get_config("vit_base_patch16,gpa")):
        assert (c.teacher.block, c.teacher.head) == (None, None)
        c = config_lib.fill_missing(c)
        assert (c.teacher.block, c.teacher.head) == (9, 11)
    vit_b = gpa_mae.get_config("vit_base_patch16")
    vit_b.teacher.path = fake_run(tmp_path / "b16", name="mae_vit_base_patch16")
    config_lib.preflight(config_lib.fill_missing(vit_b))
    assert (vit_b.teacher.block, vit_b.teacher.head) == (9, 11)

    large = config_lib.fill_missing(gpa_mae.get_config("vit_large_patch16,ema"))
    assert (large.teacher.block, large.teacher.head) == (18, 15)  # 24 blocks, 16 heads
    unused = config_lib.fill_missing(mae.get_config("vit_large_patch16"))  # no teacher: what earlier runs saved
    assert (unused.teacher.block, unused.teacher.head) == (9, 11)

    # a 3-head, 2-block teacher: the student itself (ema) or a checkpoint run of that size
    ema = config_lib.fill_missing(gpa_mae.get_config("vit_tiny_patch16,ema"))
    assert (ema.teacher.block, ema.teacher.head) == (9, 2)  # ViT-Ti: 12 blocks, 3 heads
    ema = gpa_mae.get_config("vit_tiny_patch16,ema")
    ema.model.depth = 2
    config_lib.validate(ema)  # unset: valid for any teacher
    assert (config_lib.fill_missing(ema).teacher.block, ema.teacher.head) == (1, 2)
    small = gpa_mae.get_config("vit_tiny_patch16")
    small.teacher.path = fake_run(tmp_path / "ti2", name="mae_vit_tiny_patch16", depth=2)
    config_lib.validate(config_lib.fill_missing(small))
    assert (small.teacher.block, small.teacher.head) == (None, None)  # only the run says; fill_missing reads nothing
    config_lib.preflight(small)
    assert (small.teacher.block, small.teacher.head) == (1, 2)
    mine = gpa_mae.get_config("vit_tiny_patch16")
    mine.teacher.path, mine.teacher.head = small.teacher.path, 0
    config_lib.preflight(config_lib.fill_missing(mine))
    assert (mine.teacher.block, mine.teacher.head) == (1, 0)  # set: kept
    mine.teacher.block, mine.teacher.head = None, 11
    with pytest.raises(config_lib.ConfigError, match=r"config.teacher.head=11: expected a head index in \[0, 3\) "
                                                     r"or -1 \(mean\) for the workdir '.*ti2' teacher"):
        config_lib.preflight(config_lib.fill_missing(mine))
