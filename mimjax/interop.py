"""`mimjax export` and `mimjax import`: PyTorch checkpoints in and out.

    mimjax export --workdir W --format timm --out vit.safetensors [--pool avg]
    mimjax export --workdir W --format mae --out mae_full.pth
    mimjax import --in mae_pretrain_vit_base.pth --out teachers/mae_b16 [--name vit_base_patch16]

The layouts and files are `mimjax.export` (which knows nothing of training); this module
joins them to workdirs and checkpoints.
"""
from __future__ import annotations

import os

from mimjax import paths
from mimjax import workdir as workdir_lib
from mimjax.errors import UsageError

FORMATS = ("timm", "mae")


def export_weights(workdir: str, fmt: str, out: str, pool: str = "token") -> int:
    """Writes a run's latest weights as a timm or official-MAE state dict: OUT a folder
    (OUT/model.safetensors + OUT/config.json, the Hugging Face / timm layout of
    `mimjax.export.hub`), or the single file OUT.safetensors / OUT.pth with OUT.json
    (architecture, normalisation, the checkpoint step); returns (number of tensors, step).
    OUT may not be a run directory or lie in one's checkpoints/, and replaces only an
    earlier export (`_check_not_a_user_file`)."""
    from mimjax import export
    from mimjax.data.augment import EVAL_CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD
    from mimjax.export import hub

    if fmt not in FORMATS:
        raise UsageError(f"--format={fmt}: expected one of {', '.join(FORMATS)}")
    paths.check_reachable(workdir, "--workdir")  # gs://...: one line before any work
    paths.check_reachable(out, "--out")
    if hub.is_folder_output(out) and paths.exists(out) and not paths.isdir(out):
        raise UsageError(f"--out {out!r} is a file: expected a folder, or a name ending in .safetensors or .pth")
    workdir_lib.check_output(out, "--out", not_in=workdir)  # never into a run directory or its checkpoints/
    _check_not_a_user_file(out)
    mc = workdir_lib.model_config(workdir)
    if mc is None:
        raise UsageError(f"{workdir!r} has no config.json; is it a mimjax workdir?")
    step, params = workdir_lib.load_latest_params(workdir)
    name = mc.name[len("mae_"):]
    if fmt == "timm":
        sd = export.to_timm_state_dict(params, name, img_size=mc.img_size, global_pool=pool)
    else:
        sd = export.to_mae_state_dict(params, name, img_size=mc.img_size)
    arch = export.architecture(params, mc.img_size)
    meta = {"format": fmt, "name": name, "global_pool": pool, "architecture": arch,
            "norm_pix_loss": mc.norm_pix_loss, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "source_workdir": paths.absolute(workdir), "step": int(step)}
    if not hub.is_folder_output(out):
        export.save_state_dict(sd, out, meta)
    elif fmt == "timm":
        hub.save_folder(sd, out, hub.timm_config(arch, global_pool=pool, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                                 crop_pct=EVAL_CROP_FRACTION, extra=meta))
    else:  # the official MAE layout is no timm model: the folder's config.json is our record
        hub.save_folder(sd, out, {"architecture": f"mae_{name}", **meta})
    return len(sd), int(step)


def _is_export_record(path: str) -> bool:
    """Whether the JSON file `path` is one an export wrote (its `mimjax` record, or the
    record itself), i.e. an earlier export that may be replaced."""
    import json

    try:
        record = json.loads(paths.read_text(path))
    except (OSError, ValueError):
        return False
    if isinstance(record, dict) and isinstance(record.get("mimjax"), dict):
        record = record["mimjax"]
    return isinstance(record, dict) and "format" in record and "source_workdir" in record


def _check_not_a_user_file(out: str) -> None:
    """An export replaces an earlier export, never another file, and writes through no link.
    A file is an export's when its record says so: a file output F's sidecar F.json, or a
    folder's config.json, holding the `format` and `source_workdir` every export writes
    (`_is_export_record`). UsageError, before anything is written, when a file the export
    would write (F and F.json; DIR/model.safetensors and DIR/config.json) is a symbolic link,
    or exists without an export's record beside it, or when a file output is a directory."""
    from mimjax.export import hub

    if hub.is_folder_output(out):
        record = paths.join(out, hub.CONFIG_NAME)
        targets = [paths.join(out, hub.WEIGHTS_NAME), record]
    else:
        record = out + ".json"
        targets = [out, record]
    for p in targets:
        if not paths.is_remote(p) and os.path.islink(p):
            raise UsageError(f"--out {out!r}: {p} is a symbolic link (to {os.readlink(p)!r}); export never writes "
                             f"through a link: choose another path")
    if not hub.is_folder_output(out) and paths.isdir(out):
        raise UsageError(f"--out {out!r} is a directory: expected a file name ending in .safetensors or .pth")
    if paths.exists(record) and not _is_export_record(record):
        raise UsageError(f"--out {out!r}: {record} exists and was not written by `mimjax export`; it is not "
                         f"overwritten: choose another path")
    taken = [p for p in targets if paths.exists(p)]
    if taken and not paths.exists(record):
        raise UsageError(f"--out {out!r}: {taken[0]} exists and was not written by `mimjax export` (no export "
                         f"record {record} beside it); it is not overwritten: choose another path")


def import_checkpoint(inp: str, out: str, name: str = "vit_base_patch16", img_size: int = 224) -> bool:
    """Converts a timm / MAE checkpoint (F.pth, loaded weights-only, or F.safetensors) into a
    mimjax directory OUT (config.json + checkpoints/0) usable as teacher.path; returns
    whether it holds the MAE decoder too. Weights with a NaN or inf are a UsageError, before
    anything is written."""
    from mimjax import export
    from mimjax.export import hub
    from mimjax.train import config as config_lib

    paths.check_reachable(inp, "--in")
    paths.check_reachable(out, "--out")
    if paths.exists(workdir_lib.checkpoints_dir(out)):
        raise UsageError(f"{out!r} already holds checkpoints; choose a new directory")
    try:
        state_dict = export.load_state_dict(hub.weights_in(inp))
        params = export.from_torch_state_dict(state_dict, name, img_size=img_size)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if bad := export.nonfinite(state_dict):
        raise UsageError(f"--in {inp!r} holds non-finite weights: {bad}; expected finite weights (the scores "
                         f"of NaN or inf weights say nothing)")
    c = config_lib.base_config()
    c.model.name, c.model.img_size = "mae_" + name, img_size
    if "decoder_blocks" in params:
        c.model.decoder_width = int(params["mask_token"].shape[-1])
        c.model.decoder_depth = len(params["decoder_blocks"])
    write_params_dir(out, c, params, {"imported_from": paths.absolute(inp)})
    return "decoder_blocks" in params


def write_params_dir(out: str, config, params, meta: dict) -> None:
    """A directory of weights that is not a training run (an import, the study's random
    encoder): OUT/config.json (the pre-training `config`) + OUT/checkpoints/0 holding
    {"params": params} and `meta`; readable wherever a run directory is (teacher.path,
    --workdir of the evaluations)."""
    from mimjax.train import checkpoint

    workdir_lib.write_config(out, config)
    ck = checkpoint.Checkpointer(workdir_lib.checkpoints_dir(out), async_save=False)
    ck.save(0, {"params": params}, meta)
    ck.wait()
    ck.close()
