"""`mimjax export` and `mimjax import`: PyTorch checkpoints in and out.

    mimjax export --workdir W --format timm --out vit.safetensors [--pool avg] [--step N]
    mimjax export --workdir W --format mae --out mae_full.pth
    mimjax import --in mae_pretrain_vit_base.pth --out teachers/mae_b16 [--name vit_base_patch16]
"""
from __future__ import annotations

import argparse
import os
import sys


def export_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="mimjax export", description="Write a run's weights for PyTorch.")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--format", choices=("timm", "mae"), required=True)
    ap.add_argument("--out", required=True, help="F.safetensors (default) or F.pth")
    ap.add_argument("--pool", choices=("token", "avg"), default="token", help="timm global_pool layout")
    args = ap.parse_args(argv)
    from mimjax import export
    from mimjax import workdir

    mc = workdir.model_config(args.workdir)
    if mc is None:
        raise SystemExit(f"mimjax export: {args.workdir!r} has no config.json; is it a mimjax workdir?")
    params = workdir.load_params(args.workdir)
    name = mc.name[len("mae_"):]
    if args.format == "timm":
        sd = export.to_timm_state_dict(params, name, img_size=mc.img_size, global_pool=args.pool)
    else:
        sd = export.to_mae_state_dict(params, name, img_size=mc.img_size)
    meta = {"format": args.format, "name": name, "global_pool": args.pool,
            "architecture": export.architecture(params, mc.img_size), "norm_pix_loss": mc.norm_pix_loss,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "source_workdir": os.path.abspath(args.workdir)}
    export.save_state_dict(sd, args.out, meta)
    print(f"wrote {args.out} ({len(sd)} tensors) and {args.out}.json")
    return 0


def import_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="mimjax import", description="Convert a timm / MAE checkpoint into a "
                                 "mimjax directory usable as teacher.path.")
    ap.add_argument("--in", dest="inp", required=True, help="F.pth (torch.load weights_only) or F.safetensors")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="vit_base_patch16")
    ap.add_argument("--img_size", type=int, default=224)
    args = ap.parse_args(argv)
    from mimjax import export
    from mimjax.train import checkpoint
    from mimjax.train import config as config_lib

    if os.path.exists(os.path.join(args.out, "checkpoints")):
        raise SystemExit(f"mimjax import: {args.out!r} already holds checkpoints; choose a new directory")
    try:
        params = export.from_torch_state_dict(export.load_state_dict(args.inp), args.name, img_size=args.img_size)
    except ValueError as e:
        print(f"mimjax import: {e}", file=sys.stderr)
        return 2
    c = config_lib.base_config()
    c.model.name, c.model.img_size = "mae_" + args.name, args.img_size
    if "decoder_blocks" in params:
        c.model.decoder_width = int(params["mask_token"].shape[-1])
        c.model.decoder_depth = len(params["decoder_blocks"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        f.write(c.to_json_best_effort(indent=2))
    ck = checkpoint.Checkpointer(os.path.join(args.out, "checkpoints"), async_save=False)
    ck.save(0, {"params": params}, {"imported_from": os.path.abspath(args.inp)})
    ck.wait()
    ck.close()
    print(f"wrote {args.out} ({'encoder + decoder' if 'decoder_blocks' in params else 'encoder'} of {args.name}); "
          f"use it with --config.teacher.source=checkpoint --config.teacher.path={args.out}")
    return 0


def main(command: str, argv) -> int:
    return {"export": export_main, "import": import_main}[command](argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
