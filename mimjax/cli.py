"""`mimjax <command>`: train (pre-training), finetune, eval, export, import, visualize. Flags
follow big_vision / the Flax examples: absl flags with an ml_collections config file,
`--config path.py:arg --config.key=value`."""
from __future__ import annotations

import sys

USAGE = """usage: mimjax <command> [flags]

commands:
  train   pre-train MAE / GPA-MAE: mimjax train --config configs/demo.py --workdir workdirs/demo
  export  weights for PyTorch:     mimjax export --workdir W --format timm|mae --out F.safetensors
  import  a PyTorch checkpoint:    mimjax import --in mae_pretrain_vit_base.pth --out DIR
  finetune  a pre-trained encoder (MAE recipe, layer decay, mixup/cutmix):
                                   mimjax finetune --config configs/finetune.py --workdir W --out FT_W
  eval    frozen features:         mimjax eval knn --workdir W --dataset embedded_faces
          linear probe (MAE):      mimjax eval linprobe --config configs/linprobe.py --workdir W
  visualize  reconstructions, GPA heatmaps, masks and curves as PNGs:
                                   mimjax visualize --workdir W --out DIR [--images a.jpg ...]
"""


def main(argv=None):
    if argv is None:  # the console script: restart once with huge-page malloc (mimjax/procenv.py)
        from mimjax import procenv as hostmem
        hostmem.reexec_with_hugepages()
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if len(argv) >= 2 else 2
    command = argv[1]
    if command == "train":
        from mimjax import train_main
        return train_main.run([argv[0] + " train"] + argv[2:])
    if command == "finetune":
        from mimjax import classify_main
        return classify_main.finetune_main(argv[2:])
    if command == "eval":
        from mimjax import eval_main
        return eval_main.main(argv[2:])
    if command == "visualize":
        from mimjax import visualize_main
        return visualize_main.main(argv[2:])
    if command in ("export", "import"):
        from mimjax import interop_main
        return interop_main.main(command, argv[2:])
    print(f"mimjax: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
