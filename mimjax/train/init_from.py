"""`model.init_from`: start a pre-training run from weights that already exist.

    --config.model.init_from=W                          a mimjax run directory (or `mimjax import` output)
    --config.model.init_from=mae_pretrain_vit_base.pth  official MAE: encoder (+ decoder, as mae_visualize_*)
    --config.model.init_from=vit.safetensors            a timm ViT state dict (.pth / .safetensors): encoder

Used to continue pre-training or to start GPA-MAE from MAE. What the source has replaces
the fresh initialisation; whatever it lacks (the GPA head, the decoder of an encoder-only
file) keeps it and is listed in one warning line; what the model lacks (a GPA head into an
MAE, an MAE decoder into a SimMIM) is dropped and listed too. Only at a fresh start: a
run that resumes takes its checkpoint and ignores the key (one log line), which is why
changing it on resume is safe (`mimjax.workdir.SAFE`).

- A run directory gives its latest checkpoint's `params`: the trained student, encoder,
  decoder and head, which is also what `mimjax export` writes, so a run and its export
  start a new run identically. Not `ema_params`: only EMA-teacher runs have them, and
  they hold the teacher's encoder alone, without the decoder trained with the student.
- PyTorch files go through the importer (`mimjax.export.from_torch_state_dict`,
  weights-only `torch.load` / safetensors), with this config's encoder size; the image
  size is the file's own (its pos_embed), since mimjax's position table is fixed.
- A missing path, a file of another model (size, patch size, decoder) or an unreadable
  one is a ConfigError naming the value and what was expected, raised by `step.build`
  before anything is written to the workdir.
- Paths go through etils.epath, so gs://... works (the importer and `mimjax.workdir` read
  remote files themselves; Orbax reads gs:// checkpoints).

The weights enter the jitted init as one `jax.pure_callback` (not as constants captured by
the jit, which would embed every weight in the compiled program: gigabytes for ViT-H).
"""
from __future__ import annotations

import dataclasses
import logging
import math

import jax
import numpy as np

from mimjax import workdir as workdir_lib
from mimjax.schema import ConfigError

log = logging.getLogger("mimjax")

KEY = "model.init_from"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_EXPECTED = "a mimjax run directory (config.json + checkpoints/) or a .pth / .safetensors state dict"


def _fail(path: str, expected: str):
    raise ConfigError(f"config.{KEY}={path!r}: expected {expected}")


@dataclasses.dataclass(frozen=True)
class Loaded:
    """Weights to start from: `params` (NumPy, top-level groups of the model's params)."""

    path: str
    what: str  # "run directory (step 300)", "MAE state dict (encoder + decoder)", ...
    params: dict  # the groups taken from the source (e.g. encoder, mask_token, decoder_*)
    fresh: tuple[str, ...]  # the model's groups the source lacks: keep their fresh initialisation
    dropped: tuple[str, ...]  # the source's groups the model lacks: not used

    def log(self) -> None:
        n = sum(x.size for x in jax.tree.leaves(self.params))
        log.info("%s=%s: %.2fM weights from the %s (%s)", KEY, self.path, n / 1e6, self.what,
                 ", ".join(sorted(self.params)))
        if self.fresh:
            log.warning("%s: not in %s, freshly initialised: %s", KEY, self.path, ", ".join(self.fresh))
        if self.dropped:
            log.warning("%s: in %s but not in this model, not used: %s", KEY, self.path, ", ".join(self.dropped))

    def apply(self, params):
        """`params` (fresh, possibly traced) with the loaded groups put in; inside jit the
        values arrive through one host callback (no constants in the program)."""
        names = sorted(self.params)
        fresh = [params[k] for k in names]
        leaves, treedef = jax.tree.flatten(fresh)
        host = [np.asarray(x, dtype=f.dtype) for x, f in
                zip(treedef.flatten_up_to([self.params[k] for k in names]), leaves)]
        shapes = [jax.ShapeDtypeStruct(f.shape, f.dtype) for f in leaves]
        got = jax.pure_callback(lambda: host, shapes)
        return {**params, **dict(zip(names, jax.tree.unflatten(treedef, got)))}


def resolve(cfg, expected, *, workdir: str | None = None) -> Loaded | None:
    """The weights `cfg.model.init_from` names, checked against `expected` (the model's
    params, abstract is enough), or None when unset or when `workdir` already holds a
    checkpoint (the run resumes from it; logged)."""
    path = cfg.model.get("init_from", "")
    if not path:
        return None
    if workdir is not None and workdir_lib.has_checkpoint(workdir):
        log.info("%s=%s is ignored: %s has a checkpoint and the run resumes from it (init_from applies "
                 "only at a fresh start)", KEY, path, workdir)
        return None
    loaded = load(cfg, expected)
    loaded.log()
    return loaded


def load(cfg, expected) -> Loaded:
    """Reads and checks `cfg.model.init_from` (see the module docstring); ConfigError."""
    from etils import epath

    path = cfg.model.init_from
    p = epath.Path(path)
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except Exception as e:  # noqa: BLE001 - a bad bucket, no credentials, ...: cannot be read
        _fail(path, f"{_EXPECTED}; it cannot be read ({type(e).__name__}: {str(e)[:200]})")
    if not exists:
        _fail(path, f"{_EXPECTED} (it does not exist)")
    arch = cfg.model.get("arch", "mae")
    if is_dir:
        params, src_arch, what = _from_run(path, p)
    elif path.endswith(TORCH_SUFFIXES):
        params, src_arch = _from_torch(path, cfg), "mae"
        what = "MAE state dict (encoder + decoder)" if "decoder_embed" in params else "encoder-only state dict"
    else:
        _fail(path, f"{_EXPECTED} (a file named {', '.join(TORCH_SUFFIXES)})")
    return select(path, what, params, src_arch, arch, expected, _describe(cfg))


def select(path: str, what: str, params: dict, src_arch: str, arch: str, expected, model_desc: str) -> Loaded:
    """Which of the source's top-level groups replace the model's (all that both have; only
    the encoder across architectures, e.g. MAE -> SimMIM, whose mask token and head differ),
    checked by name and shape."""
    from mimjax.export import shape_mismatches
    from mimjax.train.checkpoint import flat_shapes

    if "encoder" not in params:
        _fail(path, f"weights with an encoder ({model_desc}); {what} has only {', '.join(sorted(params))}")
    take = {"encoder"} if src_arch != arch else set(params) & set(expected)
    sub = {k: params[k] for k in sorted(take)}
    problems = shape_mismatches(flat_shapes(sub), flat_shapes({k: expected[k] for k in take}))
    if problems:
        _fail(path, f"weights of this config's model ({model_desc}); the {what} differs: " + "; ".join(problems))
    fresh = tuple(sorted(set(expected) - take))
    dropped = tuple(sorted(set(params) - take))
    sub = jax.tree.map(lambda x: np.asarray(x, np.float32), sub)
    return Loaded(path, what, sub, fresh, dropped)


def _describe(cfg) -> str:
    from mimjax.models import model_from_config

    m = model_from_config(cfg.model)
    e = m.encoder
    text = (f"{cfg.model.get('arch', 'mae')} {cfg.model.name}: patch {e.patch_size}, width {e.width}, "
            f"depth {e.depth}, {e.num_heads} heads")
    if hasattr(m, "decoder_width"):
        text += f"; decoder width {m.decoder_width}, depth {m.decoder_depth}, {m.decoder_heads} heads"
    return text


def _from_run(path: str, p) -> tuple[dict, str, str]:
    """(params, arch, description) of a run directory's latest checkpoint."""
    if not ((p / workdir_lib.CONFIG).exists() and (p / workdir_lib.CHECKPOINTS).is_dir()):
        _fail(path, f"{_EXPECTED}; the directory has no config.json and checkpoints/")
    saved = workdir_lib.read_config(path)
    src_arch = saved.model.get("arch", "mae") if saved is not None and "model" in saved else "mae"
    try:
        state = workdir_lib.load_state(path)
    except Exception as e:  # noqa: BLE001 - no complete step, unreadable files: one line
        _fail(path, f"{_EXPECTED} with a readable checkpoint ({type(e).__name__}: {str(e)[:300]})")
    step = state.get("step")
    what = f"run directory's checkpoint{'' if step is None else f' at step {int(np.asarray(step))}'}"
    return jax.tree.map(np.asarray, dict(state["params"])), src_arch, what


def _from_torch(path: str, cfg) -> dict:
    """mimjax params from a timm / official MAE state dict, for this config's encoder size."""
    from mimjax import export
    from mimjax.models.vit import VIT_VARIANTS

    try:  # local or gs://... (the importer reads through mimjax.paths)
        sd = export.load_state_dict(path)
    except ValueError as e:
        _fail(path, f"a readable state dict: {e}")
    mc = cfg.model
    name = mc.name[len("mae_"):]
    arch = {k: mc.get(k, 0) for k in ("patch_size", "width", "depth", "num_heads")}
    patch = arch["patch_size"] or VIT_VARIANTS[name][0]
    sd = sd.get("model", sd)
    img_size = mc.img_size
    if "pos_embed" in sd:  # the file's own image size: the position table is fixed, any size fits
        n = int(np.shape(sd["pos_embed"])[1]) - 1
        if n > 0 and math.isqrt(n) ** 2 == n:
            img_size = math.isqrt(n) * patch
    try:
        return export.from_torch_state_dict(sd, name, img_size=img_size, decoder_heads=mc.decoder_heads, arch=arch)
    except ValueError as e:
        _fail(path, f"a state dict of this config's model ({_describe(cfg)}): {e}")
