"""`mimjax <command>`: the one command line of mimjax.

Every command is parsed the same way, as in big_vision / the Flax examples: absl flags in a
fresh `absl.flags.FlagValues` per command, and for the commands driven by a config file
(train, plan, config show, finetune, eval linprobe) an ml_collections config file,
`--config path.py[:arg] --config.key=value ...`. This module holds only the flags, the help
texts, the dispatch and the mapping of errors to one line on stderr and an exit status
(a recipe named without a path: `mimjax.configs.resolve_argv`; absl's errors in one line:
`mimjax.schema.flag_error` / `loading_error`; logging and the process's end: `mimjax.procenv`):

    0  done
    2  bad command line or config: one line `mimjax <command>: ...`, no traceback
    3  the loss or gradients became non-finite (train); the step does not fit the target (plan)
    4  the disk filled up while saving a checkpoint; the previous one is intact

Nothing heavy (JAX, Flax, Orbax) is imported before the flags are parsed, so `--help` and
command-line errors are immediate. The commands' logic lives in mimjax.train.pretrain,
mimjax.eval.{finetune,linprobe,knn,visualize} and mimjax.interop.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
import textwrap
from typing import Callable

from absl import flags
from ml_collections import config_flags

from mimjax import configs, jaxenv, procenv, schema
from mimjax.errors import Interrupted, NonFiniteError, UsageError, WriteError
from mimjax.schema import ConfigError

EXIT_USAGE, EXIT_NONFINITE, EXIT_DISK_FULL = 2, 3, 4
EXIT_DOES_NOT_FIT = 3  # mimjax plan: the step does not fit the target
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
TRAIN_KEYS = "mimjax/train/config.py"  # the pre-training schema, whose keys `mimjax config show` lists
CLASSIFIER_KEYS = "mimjax/eval/config.py"  # fine-tuning and linear probing: `mimjax config show` lists them too
GROUPS = ("eval", "prepare", "config")  # the first word of two-word commands: mimjax eval knn
HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")
METAVARS = {"target": "TARGET", "workdir": "DIR", "out": "PATH", "in": "PATH", "coordinator_address": "HOST:PORT",
            "dataset": "SOURCE",
            "test_dataset": "SOURCE", "data_dir": "DIR", "images": "FILE", "name": "ARCH", "train_split": "SPLIT",
            "test_split": "SPLIT", "train_tar": "FILE", "val_tar": "FILE", "val_labels": "FILE", "folder": "DIR",
            "val_folder": "DIR"}


@dataclasses.dataclass(frozen=True)
class Command:
    name: str  # as typed: "train", "eval knn"
    summary: str  # one line
    examples: tuple[str, ...]
    define: Callable[[flags.FlagValues, list], None]  # (flag values, argv) -> defines the flags
    run: Callable[[flags.FlagValues], int]  # after parsing: the command itself -> exit status
    required: tuple[str, ...] = ()
    config_keys: str = ""  # where a config command's keys are documented
    multi: tuple[str, ...] = ()  # flags that take several values: --images a.jpg b.png


# --- Flags --------------------------------------------------------------------------
def _define_config(fv, argv, example: str):
    config_flags.DEFINE_config_file(
        "config", None, f"Config file, a Python file with get_config(arg), e.g. {example}. "
        "Any value can then be overridden: --config.KEY=VALUE.", flag_values=fv, lock_config=True, sys_argv=argv)


def _define_train(fv, argv):
    _define_config(fv, argv, "configs/demo.py or configs/gpa_mae.py:vit_base_patch16")
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, PNGs. An existing workdir is "
                        "resumed.", flag_values=fv)
    flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                      "Multi-host runtime (jax.distributed): auto = on when a TPU pod slice, a SLURM job with "
                      "several tasks, an Open MPI job or --coordinator_address says so.", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU hosts without SLURM).",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).",
                         flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).",
                         flag_values=fv)


def _define_plan(fv, argv):
    _define_config(fv, argv, "configs/gpa_mae.py:vit_base_patch16,feature")
    flags.DEFINE_string("target", None, "What to compile for: a TPU slice (v4-32, v5e-16, v5e-256, v5p-128, "
                        "v6e-64; 2xv5e-256 for two slices) or a GPU host (h100x8, h200x8, a100x8; 4xh100x8 for four "
                        "hosts).", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print the report as one JSON object.", flag_values=fv)


def _define_config_show(fv, argv):
    _define_config(fv, argv, "gpa_mae:vit_base_patch16,feature or configs/demo.py")
    flags.DEFINE_bool("json", False, "Print {key: {value, meaning}} as one JSON object.", flag_values=fv)


def _define_classifier(example: str, out_help: str):
    def define(fv, argv):
        _define_config(fv, argv, example)
        flags.DEFINE_string("workdir", None, "The pre-trained encoder: a pre-training workdir or a "
                            "`mimjax import` directory.", flag_values=fv)
        flags.DEFINE_string("out", None, out_help, flag_values=fv)
    return define


def _define_study(fv, argv):
    _define_config(fv, argv, "study:fashion_mnist or study:fashion_mnist,runlocal")
    flags.DEFINE_string("out", None, "The study's directory: one run directory per arm and seed, study.json, "
                        "study.md, study.png. The same command again skips what finished and resumes the rest.",
                        flag_values=fv)


def _define_knn(fv, argv):
    flags.DEFINE_string("workdir", None, "The pre-training workdir (or `mimjax import` directory).", flag_values=fv)
    flags.DEFINE_string("dataset", "embedded_faces", "embedded_faces | tfds:NAME | idx:DIR | arrayrecord:PATH (mimjax prepare "
                        "imagenet; --test_split validation) | folder:PATH. embedded_faces "
                        "(100 faces, 100 other crops) is split deterministically: every 4th image is a test "
                        "image.", flag_values=fv)
    flags.DEFINE_string("test_dataset", "", "A separate test set (folder:PATH or tfds:NAME).", flag_values=fv)
    flags.DEFINE_string("train_split", "train", "Training split (tfds, arrayrecord).", flag_values=fv)
    flags.DEFINE_string("test_split", "test", "Test split (tfds, arrayrecord: validation).", flag_values=fv)
    flags.DEFINE_string("data_dir", "", "TFDS data directory.", flag_values=fv)
    flags.DEFINE_enum("pool", "token", ["token", "avg"], "Features: the normed cls token or the mean patch token.",
                      flag_values=fv)
    flags.DEFINE_integer("k", 20, "Neighbours that vote (at least 1).", flag_values=fv)
    flags.DEFINE_float("temperature", 0.07, "Each vote weighs exp(cosine / temperature); above about 0.0113, where "
                       "it stays finite in float32.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 256, "Images per forward pass (at least 1).", flag_values=fv)
    flags.DEFINE_boolean("random_init", False, "Evaluate a randomly initialised encoder of the same "
                         "architecture (the baseline).", flag_values=fv)


def _define_export(fv, argv):
    flags.DEFINE_string("workdir", None, "The pre-training workdir; its latest checkpoint is exported.",
                        flag_values=fv)
    flags.DEFINE_enum("format", None, ["timm", "mae"], "timm: a timm VisionTransformer (encoder); mae: the "
                      "official MAE layout (encoder + decoder).", flag_values=fv)
    flags.DEFINE_string("out", None, "DIR: a timm / Hugging Face folder (DIR/model.safetensors + DIR/config.json); "
                        "or one file, F.safetensors or F.pth, with F.json next to it.", flag_values=fv)
    flags.DEFINE_enum("pool", "token", ["token", "avg"], "timm global_pool layout.", flag_values=fv)


def _define_import(fv, argv):
    flags.DEFINE_string("in", None, "F.pth (torch.load weights_only), F.safetensors, or an export folder "
                        "(DIR/model.safetensors).", flag_values=fv)
    flags.DEFINE_string("out", None, "A new directory, usable as --config.teacher.path.", flag_values=fv)
    flags.DEFINE_string("name", "vit_base_patch16", "The architecture of the checkpoint (a mimjax export's "
                        "record beside the weights gives it, sizes included).", flag_values=fv)
    flags.DEFINE_integer("img_size", 224, "Image size the position embeddings are for (likewise).", flag_values=fv)


def _define_prepare_imagenet(fv, argv):
    flags.DEFINE_string("out", None, "A new (or empty) directory: ArrayRecord shards + metadata.json; train with "
                        "--config.data.source=arrayrecord:OUT.", flag_values=fv)
    flags.DEFINE_string("train_tar", "", "ILSVRC2012_img_train.tar (a tar of per-class tars n01440764.tar ...).",
                        flag_values=fv)
    flags.DEFINE_string("val_tar", "", "ILSVRC2012_img_val.tar (flat ILSVRC2012_val_00000001.JPEG ...).",
                        flag_values=fv)
    flags.DEFINE_string("val_labels", "", "Validation labels: LOC_val_solution.csv, a text file of synset ids "
                        "(one per line in image order, or `FILENAME SYNSET` lines), or the devkit "
                        "ILSVRC2012_devkit_t12.tar.gz (needs scipy).", flag_values=fv)
    flags.DEFINE_string("folder", "", "Instead of --train_tar: an ImageNet-style class-per-folder directory "
                        "(train split).", flag_values=fv)
    flags.DEFINE_string("val_folder", "", "Instead of --val_tar: a class-per-folder validation directory, or a "
                        "flat one with --val_labels (Kaggle's CLS-LOC/val + LOC_val_solution.csv).", flag_values=fv)
    flags.DEFINE_integer("examples_per_shard", 1024, "Images per ArrayRecord shard.", flag_values=fv)
    flags.DEFINE_integer("workers", 0, "Threads that check (decode) images; 0 = the CPU count.", flag_values=fv)
    flags.DEFINE_boolean("strict", False, "An unreadable image is an error (default: skipped, counted, listed in "
                         "metadata.json and the summary).", flag_values=fv)
    flags.DEFINE_integer("max_side", 0, "Store images whose longer side is over this many pixels shrunk to it "
                         "(re-encoded JPEG, as FFCV; less to decode per step): at least 32, 224 or more for the "
                         "ImageNet recipes; 0 keeps the files' bytes.",
                         flag_values=fv)


def _define_visualize(fv, argv):
    flags.DEFINE_string("workdir", None, "The pre-training workdir; its latest checkpoint is shown.",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "Directory for the PNGs.", flag_values=fv)
    flags.DEFINE_multi_string("images", [], "Image files (default: the run's dataset).", flag_values=fv)
    flags.DEFINE_integer("num_images", 4, "Images taken from the dataset.", flag_values=fv)
    flags.DEFINE_float("progress", None, "Training progress in [0, 1] of the reconstruction's mask "
                       "(default: the checkpoint's).", flag_values=fv)
    flags.DEFINE_float("mask_progress", None, "Progress of the last column's mask (default: 1.0, or 0.0 when "
                       "--progress is past the middle, so that it differs from the input's mask).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Which images and masks.", flag_values=fv)


# --- The commands (heavy imports inside) ----------------------------------------------
def _run_train(fv) -> int:
    from mimjax.parallel.distributed import init_distributed

    init_distributed(fv.distributed, fv.coordinator_address, fv.num_processes, fv.process_id)  # before any device use
    from mimjax.train import pretrain

    pretrain.train(fv.config, fv.workdir)
    return 0


def _run_plan(fv) -> int:
    from mimjax.parallel import targets

    try:
        target = targets.parse(fv.target)
    except ValueError as e:
        raise UsageError(str(e)) from None
    env = targets.compile_only_env(target, jaxenv.users_env(os.environ))  # not procenv's JAX_PLATFORMS
    os.environ.update(env)  # before JAX starts a backend (the config file has imported jax already)
    if "JAX_PLATFORMS" in env:
        import jax

        jax.config.update("jax_platforms", env["JAX_PLATFORMS"])
    from mimjax.train import config as config_lib, plan

    cfg = fv.config
    if "arms" in cfg:  # a study (configs/study.py): its costliest pre-training, a teacher pass every step
        from mimjax.study import run as study_run

        cfg = study_run.pretrain_config(cfg, "gpa_ema", 0, "")
    cfg = config_lib.fill_missing(cfg)
    config_lib.validate(cfg, num_devices=target.num_devices)  # the pure check: plan reads no data, no teacher
    config_lib.follow_teacher(cfg)  # an unset teacher block / head: from teacher.path's config.json, as build reads it
    try:
        report = plan.plan(cfg, target, config_name=configs.config_arg(sys.argv) or "")
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(json.dumps(report) if fv.json else plan.format_report(report))
    if not report["fits"]:
        print(f"mimjax plan: {plan.shortfall_line(report)}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    return 0


def _run_config_show(fv) -> int:
    from mimjax import config_show

    table = config_show.rows(config_show.resolve(fv.config))
    print(json.dumps(config_show.as_json(table)) if fv.json else config_show.format_rows(table))
    return 0


def _run_finetune(fv) -> int:
    from mimjax.eval import finetune

    print(json.dumps(finetune.finetune(fv.config, fv.workdir, fv.out)))
    return 0


def _run_linprobe(fv) -> int:
    from mimjax.eval import linprobe

    print(json.dumps(linprobe.linprobe(fv.config, fv.workdir, fv.out)))
    return 0


def _run_study(fv) -> int:
    from mimjax.study import run

    doc = run.study(fv.config, fv.out)
    print(f"wrote {os.path.join(fv.out, 'study.md')}, study.json and study.png")
    failed = [f"{arm} seed {seed}" for arm, runs in doc["failed"].items() for seed in runs]
    if failed:
        return _fail("mimjax study", f"{len(failed)} arm x seed run(s) failed ({', '.join(failed)}; their errors "
                     f"are in study.md); the same command again retries them", 1)
    return 0


def _run_knn(fv) -> int:
    from mimjax.eval import knn

    result = knn.run_knn(fv.workdir, fv.dataset, test_dataset=fv.test_dataset, train_split=fv.train_split,
                         test_split=fv.test_split, data_dir=fv.data_dir, pool=fv.pool, k=fv.k,
                         temperature=fv.temperature, batch_size=fv.batch_size, random_init=fv.random_init,
                         write=False)
    print(json.dumps(result), flush=True)  # first: a result that cannot be saved is still shown
    try:
        knn.write_result(fv.workdir, result)
    except OSError as e:
        return _fail("mimjax eval knn", f"the result above was not saved: cannot write "
                     f"{knn.result_path(fv.workdir, fv.random_init)} ({e.strerror or e})")
    return 0


def _run_export(fv) -> int:
    from mimjax import interop

    from mimjax.export import hub

    n, step = interop.export_weights(fv.workdir, fv.format, fv.out, pool=fv.pool)
    if hub.is_folder_output(fv.out):
        print(f"wrote {fv.out}/{hub.WEIGHTS_NAME} ({n} tensors, checkpoint step {step}) and "
              f"{fv.out}/{hub.CONFIG_NAME}")
    else:
        print(f"wrote {fv.out} ({n} tensors, checkpoint step {step}) and {fv.out}.json")
    return 0


def _run_import(fv) -> int:
    from mimjax import interop

    out = fv["out"].value
    given = {k: fv[k].value for k in ("name", "img_size") if fv[k].present}  # else the export record's
    decoder, name = interop.import_checkpoint(fv["in"].value, out, **given)
    print(f"wrote {out} ({'encoder + decoder' if decoder else 'encoder'} of {name}); "
          f"use it with --config.teacher.source=checkpoint --config.teacher.path={out}")
    return 0


def _run_prepare_imagenet(fv) -> int:
    from mimjax.data import imagenet

    meta = imagenet.prepare(fv.out, train_tar=fv.train_tar, val_tar=fv.val_tar, val_labels=fv.val_labels,
                            folder=fv.folder, val_folder=fv.val_folder, examples_per_shard=fv.examples_per_shard,
                            workers=fv.workers, strict=fv.strict, max_side=fv.max_side)
    print(imagenet.summary(meta, fv.out))
    return 0


def _run_visualize(fv) -> int:
    from mimjax.eval.visualize import visualize

    visualize(fv.workdir, fv.out, images=tuple(fv.images), num_images=fv.num_images, progress=fv.progress,
              mask_progress=fv.mask_progress, seed=fv.seed)
    return 0


COMMANDS = {c.name: c for c in [
    Command("train", "Pre-train MAE / GPA-MAE; the same command again resumes from the latest checkpoint.",
            ("mimjax train --config configs/demo.py --workdir workdirs/demo",
             "mimjax train --config configs/gpa_mae.py:vit_base_patch16 --workdir W --config.batch_size=256"),
            _define_train, _run_train, required=("config", "workdir"), config_keys=TRAIN_KEYS),
    Command("plan", "Compile the train step for a TPU slice or a GPU host (no accelerator needed): memory, "
            "FLOPs, step time; exit 3 when it does not fit.",
            ("mimjax plan --config configs/gpa_mae.py:vit_base_patch16,feature --target h100x8",
             "mimjax plan --config configs/mae.py:vit_large_patch16 --target v5e-256 --json"),
            _define_plan, _run_plan, required=("config", "target"), config_keys=TRAIN_KEYS),
    Command("config show", "Print a pre-training, fine-tuning or linear-probe config as its command resolves it "
            "(recipe, overrides, checks): one line per key, `key = value  # meaning`.",
            ("mimjax config show --config gpa_mae:vit_base_patch16,feature",
             "mimjax config show --config configs/demo.py --config.batch_size=16 --json",
             "mimjax config show --config linprobe:runlocal"),
            _define_config_show, _run_config_show, required=("config",), config_keys=TRAIN_KEYS),
    Command("finetune", "Fine-tune a pre-trained encoder (MAE recipe: layer decay, mixup/cutmix); prints the "
            "result as JSON.",
            ("mimjax finetune --config configs/finetune.py:vit_base_patch16 --workdir PRETRAIN_W --out FT_W",),
            _define_classifier("configs/finetune.py or configs/finetune.py:runlocal",
                               "Output directory: checkpoints, metrics.jsonl, the result JSON. The same command "
                               "again resumes."),
            _run_finetune, required=("config", "workdir", "out"), config_keys=CLASSIFIER_KEYS),
    Command("eval knn", "Weighted k-NN accuracy of a run's frozen encoder (DINO protocol); prints JSON and "
            "writes WORKDIR/knn.json (--random_init: WORKDIR/knn_random_init.json).",
            ("mimjax eval knn --workdir W --dataset embedded_faces",
             "mimjax eval knn --workdir W --dataset tfds:imagenet2012 --data_dir /data/tfds "
             "--train_split train --test_split validation",
             "mimjax eval knn --workdir W --dataset folder:/path/train --test_dataset folder:/path/val"),
            _define_knn, _run_knn, required=("workdir",)),
    Command("eval linprobe", "Linear probe of the frozen encoder (MAE protocol); prints the result as JSON.",
            ("mimjax eval linprobe --config configs/linprobe.py:runlocal --workdir W",),
            _define_classifier("configs/linprobe.py or configs/linprobe.py:runlocal",
                               "Output directory: checkpoints, metrics.jsonl, the result JSON "
                               "(default: WORKDIR/linprobe)."),
            _run_linprobe, required=("config", "workdir"), config_keys=CLASSIFIER_KEYS),
    Command("study", "Does GPA learn better features than MAE? Every arm x seed pre-trained and evaluated "
            "(linear probe, fine-tune, k-NN), with paired 95% intervals; writes OUT/study.{json,md,png}.",
            ("mimjax study --config study:fashion_mnist --out studies/fmnist",
             "mimjax study --config study:fashion_mnist --out S --config.seeds=0,1,2,3,4 "
             "--config.data.source=idx:/path/to/mnist"),
            _define_study, _run_study, required=("config", "out"), config_keys="mimjax/configs/study.py"),
    Command("export", "Write a run's weights for PyTorch (timm or the official MAE layout).",
            ("mimjax export --workdir W --format timm --out vit_b16 [--pool avg]   # timm.create_model('local-dir:vit_b16')",
             "mimjax export --workdir W --format mae --out mae_full.pth"),
            _define_export, _run_export, required=("workdir", "format", "out")),
    Command("import", "Convert a timm / MAE PyTorch checkpoint into a mimjax directory usable as teacher.path.",
            ("mimjax import --in mae_pretrain_vit_base.pth --out teachers/mae_b16 --name vit_base_patch16",),
            _define_import, _run_import, required=("in", "out")),
    Command("visualize", "Reconstructions, GPA heatmaps, masks and training curves of a run, as PNGs.",
            ("mimjax visualize --workdir W --out DIR",
             "mimjax visualize --workdir W --out DIR --images a.jpg b.png --progress 0.3"),
            _define_visualize, _run_visualize, required=("workdir", "out"), multi=("images",)),
    Command("prepare imagenet", "Write ImageNet (official tars or class folders) as ArrayRecord shards for "
            "data.source=arrayrecord:OUT; no TensorFlow.",
            ("mimjax prepare imagenet --train_tar ILSVRC2012_img_train.tar --val_tar ILSVRC2012_img_val.tar "
             "--val_labels LOC_val_solution.csv --out /data/imagenet_ar",
             "mimjax prepare imagenet --folder /data/imagenet/train --val_folder /data/imagenet/val --out DIR"),
            _define_prepare_imagenet, _run_prepare_imagenet, required=("out",)),
]}

USAGE = "usage: mimjax <command> [flags]   (mimjax <command> --help for its flags)\n\ncommands:\n" + "".join(
    f"  {name:<18}{c.summary.split(';')[0].rstrip('.')}\n                    e.g. {c.examples[0]}\n"
    for name, c in COMMANDS.items()) + "\n  mimjax --version"
EVAL_USAGE = ("usage: mimjax eval knn|linprobe [flags]\n\n" + "".join(
    f"  {name:<14}{COMMANDS[name].summary}\n" for name in ("eval knn", "eval linprobe")))


# --- Help ------------------------------------------------------------------------------
def _flag_usage(flag, required: bool, multi: bool) -> tuple[str, str]:
    name = flag.name
    if flag.boolean:
        left = f"--[no]{name}"
    elif name == "config":
        left = "--config FILE[:ARG]"
    elif isinstance(flag.parser, flags.EnumParser):
        left = f"--{name} {'|'.join(flag.parser.enum_values)}"
    else:
        var = METAVARS.get(name) or {"int": "N", "float": "X"}.get(flag.parser.flag_type(), "VALUE")
        left = f"--{name} {var} [{var} ...]" if multi else f"--{name} {var}"
    text = re.sub(r"^<[^>]*>: ", "", flag.help)
    text = re.sub(r";\s*repeat this option to specify a list of values$", "", text)
    if required:
        text = "(required) " + text
    elif flag.default not in (None, "", []) or flag.boolean:
        text += f" (default: {flag.default})"
    return left, text


def help_text(cmd: Command) -> str:
    fv = flags.FlagValues()
    cmd.define(fv, [])
    rows = []
    for name in list(fv):
        left, text = _flag_usage(fv[name], name in cmd.required, name in cmd.multi)
        rows.append((left, text))
        if name == "config":
            where = ("`mimjax config show --config FILE` lists them with their meanings"
                     if cmd.config_keys in (TRAIN_KEYS, CLASSIFIER_KEYS) else f"the keys are in {cmd.config_keys}")
            rows.append(("--config.KEY=VALUE", "Override a config value, e.g. --config.batch_size=256 "
                         f"--config.optimizer.lr=1e-4; {where}."))
    out = [f"usage: mimjax {cmd.name} " + " ".join(
        _flag_usage(fv[n], True, n in cmd.multi)[0] for n in cmd.required)
        + (" [--config.KEY=VALUE ...]" if cmd.config_keys else "") + " [flags]", "", cmd.summary, "",
        "example" + ("s" if len(cmd.examples) > 1 else "") + ":"]
    out += [f"  {e}" for e in cmd.examples]
    out += ["", "flags:"]
    for left, text in rows:
        wrapped = textwrap.wrap(text, 100 - 26) or [""]
        if len(left) > 22:
            out.append(f"  {left}")
            out += [" " * 26 + w for w in wrapped]
        else:
            out.append(f"  {left:<22}  {wrapped[0]}")
            out += [" " * 26 + w for w in wrapped[1:]]
    return "\n".join(out)


# --- Parsing ---------------------------------------------------------------------------
def _expand_multi(args: list, names) -> list:
    """`--images a.jpg b.png` -> `--images=a.jpg --images=b.png` (absl takes one value per flag)."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a.lstrip("-") in names and a.startswith("-") and "=" not in a:
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                out.append(f"--{a.lstrip('-')}={args[i]}")
                i += 1
            continue
        out.append(a)
        i += 1
    return out


def parse(cmd: Command, args: list) -> flags.FlagValues:
    """The command's flags parsed from `args` (the flags after the command's name); raises
    UsageError with one line."""
    argv = configs.resolve_argv([f"mimjax {cmd.name}", *_expand_multi(list(args), cmd.multi)])
    fv = flags.FlagValues()
    cmd.define(fv, argv)
    flags.mark_flags_as_required(list(cmd.required), flag_values=fv)
    spec = configs.config_arg(argv)
    if "config" in cmd.required and (missing := configs.missing(spec)):
        raise UsageError(missing)
    try:
        rest = fv(argv)
    except flags.Error as e:
        raise UsageError(schema.flag_error(e, list(fv))) from None
    except Exception as e:  # noqa: BLE001 - raised by the config file or an override of a missing key
        raise UsageError(schema.loading_error(e, spec, configs.overrides(argv))) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected argument(s): {' '.join(rest[1:])}")
    if "config" in fv:
        try:
            getattr(fv.config, "keys")
        except OSError as e:  # config_flags defers a failed load to the first access
            raise UsageError(schema.deferred_load_error(e, spec)) from None
        schema.single_duration(fv.config, configs.overrides(argv))  # --config.total_steps=N alone is enough
    return fv


# --- Running ---------------------------------------------------------------------------
def _fail(prog: str, message: str, status: int = EXIT_USAGE) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def _execute(cmd: Command, fv) -> int:
    prog = f"mimjax {cmd.name}"
    procenv.setup_logging()
    try:
        jaxenv.check(os.environ)  # JAX_PLATFORMS, XLA_FLAGS: one line before JAX starts, not its abort
        return cmd.run(fv)
    except ConfigError as e:
        return _fail(prog, f"config error: {e}")
    except UsageError as e:
        return _fail(prog, str(e))
    except NonFiniteError as e:
        return _fail(prog, str(e), EXIT_NONFINITE)
    except WriteError as e:  # a full disk, or a checkpoint folder that cannot be written
        if cmd.name == "train":
            procenv.exit_with_last_line(prog, str(e), EXIT_DISK_FULL)  # the run is closed
        return _fail(prog, str(e), EXIT_DISK_FULL)
    except Interrupted as e:  # Ctrl-C in a run loop: the current step is saved (mimjax/train/loop.py)
        return _fail(prog, str(e), EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # Ctrl-C outside a run loop (loading, compiling, evaluating): nothing to save
        return _fail(prog, "interrupted (Ctrl-C)", EXIT_INTERRUPTED)
    except Exception as e:  # several processes: a collective failed because another one went away
        if (line := jaxenv.backend_error(e, os.environ)) is not None:  # or the user's JAX_PLATFORMS failed
            return _fail(prog, line)
        from mimjax.parallel.distributed import lost_process_error

        line = lost_process_error(e)
        if line is None:
            raise
        return _fail(prog, line, 1)  # then JAX's shutdown names the lost process (SIGABRT, 134)


def _command(args: list) -> tuple[Command | None, list, str | None]:
    """(command, its flags, None) or (None, [], the text to print for `mimjax eval ...`)."""
    name = args[0]
    if name == "eval":
        if len(args) < 2 or args[1].startswith("-"):
            return None, [], EVAL_USAGE
        name, args = f"eval {args[1]}", args[1:]
    elif name in GROUPS and len(args) > 1 and not args[1].startswith("-"):  # mimjax prepare imagenet
        name, args = f"{name} {args[1]}", args[1:]
    return COMMANDS.get(name), args[1:], None


def main(argv=None) -> int:
    """`mimjax ARGS` (argv: the program name, then the arguments) -> exit status."""
    if argv is None:  # the console script: restart once with huge-page malloc (mimjax/procenv.py)
        procenv.setup_process(plan=sys.argv[1:2] == ["plan"])
    args = list(sys.argv if argv is None else argv)[1:]
    if not args:
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    if args[0] in ("-h", "--help", "-help", "help") and len(args) == 1:
        return procenv.say(USAGE)
    if args[0] in ("--version", "-V", "version"):
        import mimjax

        return procenv.say(f"mimjax {mimjax.__version__}")
    if args[0] == "help":  # mimjax help train
        args = [*args[1:], "--help"]
    cmd, rest, text = _command(args)
    if text is not None:  # `mimjax eval` alone, or `mimjax eval --help`
        if any(a in HELP_ARGS for a in args[1:]):
            return procenv.say(text)
        print(text, file=sys.stderr)
        return EXIT_USAGE
    if cmd is None:
        name = " ".join(args[:2]) if args[0] in GROUPS else args[0]
        close = difflib.get_close_matches(name, list(COMMANDS) + ["eval"], n=1)
        return _fail("mimjax", f"unknown command {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                     + "; mimjax --help lists the commands")
    if any(a in HELP_ARGS for a in rest):
        return procenv.say(help_text(cmd))
    try:
        fv = parse(cmd, rest)
    except UsageError as e:
        return _fail(f"mimjax {cmd.name}", str(e))
    return _execute(cmd, fv)


if __name__ == "__main__":
    sys.exit(main())
