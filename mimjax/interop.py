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
    earlier export (`_check_not_a_user_file`). A fine-tuning run (`mimjax finetune`) exports
    its classifier in timm's layout: the encoder with its learned position embedding, the
    run's pooling (`pool` is ignored) and `head.*`; timm loads it with its num_classes."""
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
    if out.endswith(".pth"):
        try:
            export.files.require_torch(out)  # before any work, not after reading the checkpoint
        except ValueError as e:
            raise UsageError(f"--out {e}") from None
    run_cfg = workdir_lib.read_config(workdir)  # config.json read once: the model section and the classifier's keys
    mc = None if run_cfg is None or "model" not in run_cfg else run_cfg.model
    if mc is None:
        raise UsageError(f"{workdir!r} has no config.json; is it a mimjax workdir?")
    step, params = workdir_lib.load_latest_params(workdir)
    num_classes = 0
    if "init" in run_cfg:  # a classifier's run (mimjax finetune / eval linprobe): its encoder's config
        if "encoder" not in params or fmt != "timm":
            raise UsageError(f"--workdir {workdir!r} is a {'linear probe' if 'encoder' not in params else 'fine-tuning'}"
                             f" run: export takes a pre-training run, or a fine-tuning run with --format timm")
        pool, num_classes = run_cfg.pool, int(params["head"]["bias"].shape[0])  # the run's pooling
        mc = workdir_lib.model_config(run_cfg.init).copy_and_resolve_references()  # the encoder's architecture
        mc.img_size = run_cfg.model.img_size or mc.img_size
    name = mc.name[len("mae_"):]
    if fmt == "timm":
        sd = export.to_timm_state_dict(params, name, img_size=mc.img_size, global_pool=pool)
    else:
        sd = export.to_mae_state_dict(params, name, img_size=mc.img_size)
    arch = export.architecture(params, mc.img_size)
    meta = {"format": fmt, "name": name, "global_pool": pool, "architecture": arch, "num_classes": num_classes,
            "norm_pix_loss": mc.norm_pix_loss, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "source_workdir": paths.absolute(workdir), "step": int(step)}
    if fmt == "mae":  # what the tensors do not show (mimjax import reads it back)
        meta["decoder_heads"] = int(mc.decoder_heads)
    if not hub.is_folder_output(out):
        export.save_state_dict(sd, out, meta)
    elif fmt == "timm":
        hub.save_folder(sd, out, hub.timm_config(arch, global_pool=pool, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                                 crop_pct=EVAL_CROP_FRACTION, extra=meta, num_classes=num_classes))
    else:  # the official MAE layout is no timm model: the folder's config.json is our record
        hub.save_folder(sd, out, {"architecture": f"mae_{name}", **meta})
    return len(sd), int(step)


def _export_record(path: str) -> dict | None:
    """The record an export writes (format, source_workdir, name, architecture, step, ...)
    when the JSON file `path` holds one (a folder's config.json carries it under `mimjax`),
    else None."""
    import json

    try:
        record = json.loads(paths.read_text(path))
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and isinstance(record.get("mimjax"), dict):
        record = record["mimjax"]
    return record if isinstance(record, dict) and "format" in record and "source_workdir" in record else None


def _is_export_record(path: str) -> bool:
    """Whether the JSON file `path` is one an export wrote, i.e. an earlier export that may
    be replaced."""
    return _export_record(path) is not None


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


def import_checkpoint(inp: str, out: str, name: str | None = None, img_size: int | None = None) -> tuple[bool, str]:
    """Converts a timm / MAE checkpoint (F.pth, loaded weights-only, or F.safetensors, or an
    export folder) into a new mimjax directory OUT (config.json + checkpoints/0) usable as
    teacher.path; returns (whether it holds the MAE decoder too, the architecture in words).

    The architecture is the export record beside the weights when `mimjax export` wrote
    them (DIR/config.json, F.json: name, image size, patch, width, depth, heads), so an
    export of any size imports back as it is; a `name` or `img_size` that disagrees with
    it is a UsageError. Otherwise `name` (default vit_base_patch16) at `img_size` (224).
    UsageError before anything is written: weights with a NaN or inf, an OUT that holds
    checkpoints/ or a config.json (a file import did not write is never replaced) or lies
    inside a run's checkpoints/."""
    from mimjax import export
    from mimjax.export import hub
    from mimjax.train import config as config_lib

    paths.check_reachable(inp, "--in")
    paths.check_reachable(out, "--out")
    if paths.exists(workdir_lib.checkpoints_dir(out)):
        raise UsageError(f"{out!r} already holds checkpoints; choose a new directory")
    if paths.exists(out) and not paths.isdir(out):
        raise UsageError(f"--out {out!r} is a file: expected a new directory")
    config_file = workdir_lib.config_path(out)
    if paths.exists(config_file) or (not paths.is_remote(out) and os.path.islink(config_file)):
        raise UsageError(f"--out {out!r}: {config_file} exists; import writes a new directory (config.json and "
                         f"checkpoints/) and replaces no file: choose a new or empty directory")
    workdir_lib.check_output(out, "--out")  # not inside a run's checkpoints/
    record_file = paths.join(inp, hub.CONFIG_NAME) if paths.isdir(inp) else inp + ".json"
    record = _export_record(record_file) if paths.isfile(record_file) else None
    try:
        name, img_size, shape, decoder_heads = _architecture(record, record_file, name, img_size)
        state_dict = export.load_state_dict(hub.weights_in(inp))
        params = export.from_torch_state_dict(state_dict, name, img_size=img_size, arch=shape,
                                              decoder_heads=decoder_heads)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if bad := export.nonfinite(state_dict):
        raise UsageError(f"--in {inp!r} holds non-finite weights: {bad}; expected finite weights (the scores "
                         f"of NaN or inf weights say nothing)")
    c = config_lib.base_config()
    c.model.name, c.model.img_size = "mae_" + name, img_size
    c.model.update(shape)  # patch_size, width, depth, num_heads where the record gives them (else 0: the name's)
    c.model.learned_pos_embed = "pos_embed" in params["encoder"]  # a fine-tuned ViT's: kept (export.layouts)
    if "decoder_blocks" in params:
        c.model.decoder_width = int(params["mask_token"].shape[-1])
        c.model.decoder_depth = len(params["decoder_blocks"])
        c.model.decoder_heads = decoder_heads
    write_params_dir(out, c, params, {"imported_from": paths.absolute(inp)})
    sizes = ", ".join([*(f"{k} {v}" for k, v in shape.items()), f"img_size {img_size}"])
    return "decoder_blocks" in params, f"{name} ({sizes}, from {record_file})" if record else name


def _architecture(record: dict | None, where: str, name: str | None, img_size: int | None):
    """(name, img_size, encoder shape {patch_size, width, depth, num_heads}, decoder heads)
    of the weights to import: the export record's (`record`, read from `where`), else the
    flags' or their defaults (official MAE's 16 decoder heads). ValueError when a flag
    disagrees with the record or the record is malformed."""
    if record is None:
        return name or "vit_base_patch16", img_size or 224, {}, 16
    arch = record.get("architecture") if isinstance(record.get("architecture"), dict) else {}
    try:
        shape = {k: int(arch[k]) for k in ("patch_size", "width", "depth", "num_heads") if arch.get(k)}
        recorded = {"--name": record["name"] if isinstance(record.get("name"), str) else None,
                    "--img_size": int(arch["img_size"]) if arch.get("img_size") else None}
        decoder_heads = int(record.get("decoder_heads") or 16)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: its export record's architecture {arch!r} is not a set of sizes; expected "
                         f"the integers that `mimjax export` writes") from None
    for flag, value in (("--name", name), ("--img_size", img_size)):
        if value is not None and recorded[flag] is not None and value != recorded[flag]:
            raise ValueError(f"{flag}={value} disagrees with {where}, the export record of these weights "
                             f"({flag[2:]} {recorded[flag]}); leave {flag} out: the record gives the architecture")
    return (recorded["--name"] or name or "vit_base_patch16", recorded["--img_size"] or img_size or 224, shape,
            decoder_heads)


def write_params_dir(out: str, config, params, meta: dict) -> None:
    """A directory of weights that is not a training run (an import, the study's random
    encoder): OUT/config.json (the pre-training `config`) + OUT/checkpoints/0 holding
    {"params": params} and `meta`; readable wherever a run directory is (teacher.path,
    --workdir of the evaluations)."""
    from mimjax.train import checkpoint

    ck = checkpoint.Checkpointer(workdir_lib.checkpoints_dir(out), async_save=False)
    ck.save(0, {"params": params}, meta)
    ck.wait()
    ck.close()
    workdir_lib.write_config(out, config)  # last: a directory with config.json is complete
