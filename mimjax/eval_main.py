"""`mimjax eval knn`: weighted k-NN accuracy of a run's frozen encoder.

    mimjax eval knn --workdir W --dataset embedded_faces
    mimjax eval knn --workdir W --dataset tfds:imagenet2012 --data_dir /data/tfds --train_split train --test_split validation
    mimjax eval knn --workdir W --dataset folder:/path/train --test_dataset folder:/path/val

The embedded labelled set (`embedded_faces`: 100 faces, 100 other 25x25 crops) is split
deterministically: every 4th image is a test image, the rest are training images.

`mimjax eval linprobe` (a linear classifier trained on the frozen encoder, MAE's protocol)
takes a config file instead, see mimjax/classify_main.py:

    mimjax eval linprobe --config configs/linprobe.py:runlocal --workdir W
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def knn_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="mimjax eval knn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--dataset", default="embedded_faces", help="embedded_faces | tfds:NAME | folder:PATH")
    ap.add_argument("--test_dataset", default="", help="a separate test set (folder:PATH or tfds:NAME)")
    ap.add_argument("--train_split", default="train")
    ap.add_argument("--test_split", default="test")
    ap.add_argument("--data_dir", default="")
    ap.add_argument("--pool", choices=("token", "avg"), default="token")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=0.07)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--random_init", action="store_true", help="evaluate a randomly initialised encoder "
                    "of the same architecture (the baseline)")
    args = ap.parse_args(argv)

    import jax

    from mimjax.eval import knn as evaluate
    from mimjax import workdir
    from mimjax.data import make_iterator
    from mimjax.data.labelled import labelled_sources
    from mimjax.models import init_model, model_from_config

    mc = workdir.model_config(args.workdir)
    if mc is None:
        print(f"mimjax eval: {args.workdir!r} has no config.json; is it a mimjax workdir?", file=sys.stderr)
        return 2
    model = model_from_config(mc)
    params = (init_model(model, jax.random.key(0)) if args.random_init
              else workdir.load_params(args.workdir))
    train_src, test_src = labelled_sources(args.dataset, test_dataset=args.test_dataset, train_split=args.train_split,
                                           test_split=args.test_split, data_dir=args.data_dir)
    feats = []
    for src in (train_src, test_src):
        it = make_iterator(None, img_size=mc.img_size, global_batch_size=args.batch_size, seed=0,
                           train=False, source=src)
        feats.append(evaluate.extract_features(model.encoder, params["encoder"], it, args.pool))
    (tr_x, tr_y), (te_x, te_y) = feats
    result = evaluate.knn_accuracy(tr_x, tr_y, te_x, te_y, k=args.k, temperature=args.temperature)
    result.update(workdir=os.path.abspath(args.workdir), dataset=args.dataset, pool=args.pool,
                  random_init=args.random_init)
    print(json.dumps(result))
    if not args.random_init:
        with open(os.path.join(args.workdir, "knn.json"), "w") as f:
            json.dump(result, f, indent=2)
    return 0


USAGE = ("usage: mimjax eval knn --workdir W [--dataset embedded_faces] ...\n"
         "       mimjax eval linprobe --config configs/linprobe.py --workdir W [--out DIR] [--config.key=value ...]")


def main(argv) -> int:
    if argv and argv[0] == "knn":
        return knn_main(argv[1:])
    if argv and argv[0] == "linprobe":
        from mimjax import classify_main
        return classify_main.linprobe_main(argv[1:])
    print(USAGE, file=sys.stderr)
    return 2
