"""The programs the benchmark times, built with mimjax's own code and nothing else:
one MAE / GPA-MAE train step (recipe config + `train.make_train_step` +
`TrainState.create`, a frozen checkpoint-style teacher of the student's architecture with
random weights), the encoder forward + backward, and the masking alone.

Model-side switches for recording their effect: `--override model.key=value` (any config
key, e.g. model.remat=true, model.scan=true), `teacher_full` (run the whole teacher and
keep all heads' attention of block 9 instead of stopping after its q, k of head 11) and
`attention="explicit"` (einsum + softmax instead of `jax.nn.dot_product_attention`).
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import tempfile

import jax
import jax.numpy as jnp

from mimjax.train import schedule as schedule_lib
from mimjax.train import config as config_lib
from mimjax.train import optim
from mimjax.train import pretrain as train
from mimjax.train import teacher as teacher_lib
from mimjax.models import init_model, model_from_config, vit
from mimjax.models.vit import vit_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# method -> (recipe file, recipe flags)
METHODS = {"mae": ("mae.py", ""), "gpa_teacher": ("gpa_mae.py", ""), "gpa_feature": ("gpa_mae.py", ",feature")}


def parse_override(c, item: str):
    """Applies "a.b.c=value" to config c; the value is cast to the current value's type
    (bools: true/false/1/0; tuples and lists: a Python literal)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ValueError(f"--override {item!r}: expected key=value, e.g. model.remat=true")
    *path, leaf = key.split(".")
    node = c
    for p in path:
        node = node[p]
    if leaf not in node:
        raise ValueError(f"--override {item!r}: config has no key {key!r}")
    cur = node[leaf]
    if isinstance(cur, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--override {item!r}: expected true or false")
        value = raw.lower() in ("true", "1")
    elif isinstance(cur, (int, float, str)):
        value = type(cur)(raw)
    else:
        value = type(cur)(ast.literal_eval(raw))
    node[leaf] = value


def make_config(method: str, size: str, batch: int, img_size: int, dtype: str, overrides=()):
    """The recipe's config (configs/mae.py or configs/gpa_mae.py) at this size, batch,
    image size and dtype, on synthetic data, with a same-size frozen teacher."""
    recipe, flags = METHODS[method]
    spec = importlib.util.spec_from_file_location("bench_recipe", os.path.join(REPO, "configs", recipe))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(size + flags)
    c.batch_size, c.total_steps, c.total_epochs = batch, 1000, -1
    c.optimizer.warmup_steps = 100
    c.model.img_size, c.model.dtype = img_size, dtype
    c.data.source = "synthetic"
    if method != "mae":
        # An empty directory is no workdir, so the teacher is `vit(teacher.name)` (as for an
        # imported checkpoint); its weights are random (`build_train_step`).
        c.teacher.source, c.teacher.name, c.teacher.path = "checkpoint", size, tempfile.mkdtemp(prefix="bench_teacher_")
        c.teacher.head = min(c.teacher.head, vit_kwargs(size)["num_heads"] - 1)  # head 11 of B; the last one below
    for item in overrides:
        parse_override(c, item)
    config_lib.validate(c, num_devices=1)
    return c


class FullTeacher:
    """A teacher that runs every block (and the final norm) and keeps block `attn_block`'s
    attention logits of all heads, then selects the wanted head: the straightforward way,
    to compare with `stop_at_attn` + q, k of one head. The final features are tied into the
    result (times 0) so XLA cannot drop the blocks after `attn_block`."""

    def __init__(self, encoder):
        self.encoder = encoder

    def apply(self, variables, images, *, attn_block, attn_head=None, stop_at_attn=True):
        del stop_at_attn
        x, logits = self.encoder.apply(variables, images, attn_block=attn_block)  # [B, H, T, T]
        if attn_head is not None:
            logits = logits[:, attn_head:attn_head + 1]
        return logits + 0.0 * x.mean().astype(logits.dtype)


def _explicit_attention(q, k, v, *args, **kwargs):
    """einsum + softmax attention ([B, T, H, hd] in and out), what the fused call replaces."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)


@contextlib.contextmanager
def attention_impl(kind: str):
    """kind "fused": the model as written (`jax.nn.dot_product_attention`); "explicit":
    that call replaced by einsum + softmax; "xla" / "cudnn": the call forced to that
    `implementation` (cuDNN flash attention needs a GPU and bf16/fp16), while programs are
    traced inside the block."""
    if kind == "fused":
        yield
        return
    fused = jax.nn.dot_product_attention
    if kind == "explicit":
        replacement = _explicit_attention
    elif kind in ("xla", "cudnn"):
        replacement = lambda *a, **kw: fused(*a, **{**kw, "implementation": kind})  # noqa: E731
    else:
        raise ValueError(f"attention must be fused, explicit, xla or cudnn, got {kind!r}")
    jax.nn.dot_product_attention = replacement
    try:
        yield
    finally:
        jax.nn.dot_product_attention = fused


def build_train_step(c, teacher_full: bool = False, seed: int = 0, abstract: bool = False):
    """(jitted step, args) for one train step of config c on a synthetic device batch:
    `step(*args)` -> (state, metrics); the state (args[0]) is donated. abstract=True gives
    shapes only (`jax.ShapeDtypeStruct`s), enough to lower and compile."""
    make = jax.eval_shape if abstract else lambda f, *a: jax.jit(f)(*a)
    model = model_from_config(c.model)
    schedule = schedule_lib.Schedule(1000, c.total_steps, c.optimizer.warmup_steps, 1.0)
    lr_fn = schedule_lib.lr_schedule(c.optimizer, c.batch_size, schedule.total_steps, schedule.warmup_steps)
    tx = optim.make_optimizer(c.optimizer, lr_fn)
    k_init, k_teacher, k_data, k_step = jax.random.split(jax.random.key(seed), 4)
    state = make(lambda k: train.TrainState.create(init_model(model, k), tx), k_init)
    teacher, frozen = model.encoder, None
    if train.uses_teacher(c):
        teacher = teacher_lib.teacher_model(c, model.encoder)
        frozen = make(lambda k: teacher.init(k, jnp.zeros((1, c.model.img_size, c.model.img_size, 3)))["params"],
                      k_teacher)
        if teacher_full:
            teacher = FullTeacher(teacher)
    images = make(lambda k: jax.random.normal(k, (c.batch_size, c.model.img_size, c.model.img_size, 3)), k_data)
    step = jax.jit(train.make_train_step(c, model, teacher, tx, lr_fn, schedule), donate_argnums=(0,))
    return step, (state, {"image": images}, frozen, k_step)


def build_encoder_step(size: str, batch: int, img_size: int = 224, dtype: str = "float32", seed: int = 0):
    """(jitted fn, args): loss = mean of the encoder's output tokens [B, 1+N, D], and its
    gradient with respect to all encoder parameters (fwd + bwd, no optimizer)."""
    enc = vit(size, img_size=img_size, dtype=jnp.dtype(dtype))
    k_init, k_data = jax.random.split(jax.random.key(seed))
    params = jax.jit(lambda k: enc.init(k, jnp.zeros((1, img_size, img_size, 3)))["params"])(k_init)
    images = jax.random.normal(k_data, (batch, img_size, img_size, 3), jnp.float32)
    loss = lambda p, x: enc.apply({"params": p}, x).astype(jnp.float32).mean()
    return jax.jit(jax.value_and_grad(loss)), (params, images)


def build_masking(c, seed: int = 0):
    """(jitted fn, args): the step's masks for one batch, `train.make_mask` (per-image
    keys, vmapped `masking.gpa_mask` or `masking.random_mask`), from given GPA scores."""
    n = model_from_config(c.model).encoder.num_patches
    k_scores, k_mask = jax.random.split(jax.random.key(seed))
    scores = jax.random.uniform(k_scores, (c.batch_size, n))
    ids = jnp.arange(c.batch_size)
    fn = jax.jit(lambda key, g, progress: train.make_mask(c, key, g, n, ids, progress))
    return fn, (k_mask, scores, jnp.float32(0.5))
