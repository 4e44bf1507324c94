"""`mimjax study`: every arm x seed pre-trained, evaluated and compared (mimjax/configs/study.py).

    mimjax study --config study:fashion_mnist --out S

Each arm x seed is a run directory S/<arm>/seed_<s>/ (the pre-training workdir, or for the
random arm a directory holding the initial weights) with its results in study_eval.json
beside the run's own files and its fine-tune in finetune/. The stages of one arm x seed:
pretrain -> probe (features once, the linear probes and k-NN) -> finetune -> premise (the
teachers only). Each stage's result is written as it ends, so running the command again
skips what finished and resumes what did not (a pre-training or fine-tune resumes from its
checkpoint: kill -9 safe; Ctrl-C saves and stops the study). An arm x seed that fails is
recorded with its error and the study goes on. S/study.{json,md,png} are rewritten after
each arm x seed (mimjax/study/report.py).
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import time

import jax
import numpy as np

from mimjax import paths
from mimjax import workdir as workdir_lib
from mimjax.errors import DiskFullError, Interrupted
from mimjax.schema import ConfigError
from mimjax.study import evaluate, report

log = logging.getLogger("mimjax")
ARMS = ("mae", "gpa_teacher", "gpa_feature", "gpa_ema", "random", "attmask")
TEACHER_OF = {"gpa_teacher": "mae", "gpa_feature": "mae", "attmask": "mae"}  # arm -> the arm whose run teaches it
PREMISE_ARMS = ("mae", "gpa_ema", "random")  # whose teacher the premise is checked on
RESULT = "study_eval.json"


def arms_and_seeds(c) -> tuple[list[str], list[int]]:
    """The arms (in the order given; a GPA arm's teacher arm first) and seeds of a study
    config; ConfigError with one line for anything unknown."""
    arms = [a.strip() for a in str(c.arms).split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if not arms or unknown:
        raise ConfigError(f"config.arms={c.arms!r}: expected a comma-separated list of {', '.join(ARMS)}")
    for arm in arms:
        teacher = TEACHER_OF.get(arm)
        if teacher and (teacher not in arms or arms.index(teacher) > arms.index(arm)):
            raise ConfigError(f"config.arms={c.arms!r}: {arm} is taught by the {teacher} arm's run; list {teacher} "
                              f"before it")
    try:
        seeds = [int(s) for s in str(c.seeds).replace("(", "").replace(")", "").split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"config.seeds={c.seeds!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return arms, seeds


def run_dir(out: str, arm: str, seed: int) -> str:
    return os.path.join(out, arm, f"seed_{seed}")


def pretrain_config(c, arm: str, seed: int, out: str):
    """The pre-training config of one arm x seed (None for the random arm): c.pretrain with
    the study's data and seed, and the arm's masking, teacher and head."""
    if arm == "random":
        return None
    p = c.pretrain.copy_and_resolve_references()
    p.seed = seed
    p.data.source, p.data.split = c.data.source, c.data.train_split
    if arm == "mae":
        p.masking.strategy, p.teacher.source, p.model.gpa_head = "random", "none", False
        return p
    p.masking.hard, p.masking.soft = (0.0, 0.5), (0.3, 0.0)  # the authors' schedule (docs/method.md §3)
    p.masking.strategy = "high" if arm == "attmask" else "gpa"
    if arm == "gpa_ema":
        p.teacher.source = "ema"
    else:
        p.teacher.source, p.teacher.path = "checkpoint", run_dir(out, TEACHER_OF[arm], seed)
    if arm == "gpa_feature":  # as released: the late head and a constant soft share (configs/gpa_mae.py)
        p.model.gpa_head, p.model.gpa_head_late_start, p.masking.soft = True, True, (0.3, 0.3)
    return p


def validate(c) -> tuple[list[str], list[int]]:
    """Everything checkable before any work: arms, seeds, every arm's pre-training config,
    the evaluation settings and the data (read once: a missing or corrupt set is one line)."""
    from mimjax.data.labelled import labelled_sources
    from mimjax.eval import config as eval_config
    from mimjax.train import config as config_lib

    arms, seeds = arms_and_seeds(c)
    for arm in arms:
        p = pretrain_config(c, arm, seeds[0], "S")
        if p is not None:
            config_lib.validate(config_lib.fill_missing(p), num_devices=jax.device_count())
    f = c.finetune.copy_and_resolve_references()
    f.init = "(set per run)"
    try:
        eval_config.validate(f, num_devices=jax.device_count())
    except ConfigError as e:
        if "config.init=" not in str(e):
            raise ConfigError(str(e).replace("config.", "config.finetune.", 1)) from None
    for key, low in (("epochs", 1), ("batch_size", 1), ("warmup_epochs", 0)):
        if not isinstance(c.probe[key], int) or c.probe[key] < low:
            raise ConfigError(f"config.probe.{key}={c.probe[key]!r}: expected an integer >= {low}")
    if not (math.isfinite(c.probe.blr) and c.probe.blr > 0) or c.probe.optimizer not in ("lars", "sgd", "adamw"):
        raise ConfigError(f"config.probe: blr={c.probe.blr!r}, optimizer={c.probe.optimizer!r}: expected a positive "
                          f"blr and lars, sgd or adamw")
    from mimjax.eval.knn import MIN_TEMPERATURE

    if c.knn.k < 1 or not (math.isfinite(c.knn.temperature) and c.knn.temperature > MIN_TEMPERATURE):
        raise ConfigError(f"config.knn: k={c.knn.k}, temperature={c.knn.temperature}: expected k >= 1 and a finite "
                          f"temperature > {MIN_TEMPERATURE:.4g} (below it exp(1 / temperature) overflows float32)")
    if c.premise.num_images < 1:
        raise ConfigError(f"config.premise.num_images={c.premise.num_images}: expected >= 1")
    if not c.data.source.startswith(("idx:", "tfds:", "folder:", "arrayrecord:")):
        raise ConfigError(f"config.data.source={c.data.source!r}: expected idx:DIR (or tfds:NAME, "
                          f"arrayrecord:PATH, folder:PATH), a labelled set with train and test splits")
    try:
        train, _ = labelled_sources(c.data.source, train_split=c.data.train_split, test_split=c.data.test_split)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if len(train) < c.probe.batch_size:
        raise ConfigError(f"config.probe.batch_size={c.probe.batch_size}: more than the {len(train)} training images")
    return arms, seeds


def machine() -> dict:
    """The CPU (model name, cores), the accelerator and the JAX version the study ran on."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "devices": [str(d.device_kind) for d in jax.devices()],
            "platform": jax.default_backend(), "jax": jax.__version__, "commit": commit}


class Progress:
    """`study: [4/15] gpa_feature seed 1: finetune; about 00:42:10 left in the study` at each stage's start;
    the ETA from the measured durations (per arm and stage when known, else per stage)."""

    STAGES = ("pretrain", "probe", "finetune", "premise")

    def __init__(self, arms, seeds):
        self.total = len(arms) * len(seeds)
        self.todo = [(a, s, st) for s in seeds for a in arms for st in self.STAGES
                     if st != "premise" or a in PREMISE_ARMS]
        self.took: dict = {}

    def start(self, index: int, arm: str, seed: int, stage: str) -> None:
        eta = self.eta()
        log.info("study: [%d/%d] %s seed %d: %s%s", index, self.total, arm, seed, stage,
                 f"; about {time.strftime('%H:%M:%S', time.gmtime(eta))} left in the study" if eta is not None else "")

    def done(self, arm: str, seed: int, stage: str, seconds: float | None) -> None:
        if (arm, seed, stage) in self.todo:
            self.todo.remove((arm, seed, stage))
        if seconds is not None:
            self.took.setdefault((arm, stage), []).append(seconds)

    def eta(self) -> float | None:
        per_stage = {}
        for (arm, stage), ts in self.took.items():
            per_stage.setdefault(stage, []).extend(ts)
        total = 0.0
        for arm, _, stage in self.todo:
            known = self.took.get((arm, stage)) or per_stage.get(stage)
            if not known:
                return None
            total += float(np.mean(known))
        return total


def _load(path: str) -> dict:
    try:
        return json.loads(paths.read_text(path))
    except (OSError, ValueError):
        return {}


def _save(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    paths.write_text(path, json.dumps(result, indent=2, default=float))


def random_encoder_dir(c, seed: int, path: str) -> None:
    """The random arm's run directory: config.json + checkpoints/0 with the encoder that
    `init_model` draws from the seed (nothing trained), as `mimjax import` writes one."""
    from mimjax import interop
    from mimjax.models import init_model, model_from_config
    from mimjax.train import config as config_lib

    p = config_lib.fill_missing(c.pretrain.copy_and_resolve_references())
    p.seed = seed
    params = init_model(model_from_config(p.model), jax.random.key(seed))
    interop.write_params_dir(path, p, params, {"random_init_seed": seed})


def _stage_pretrain(c, arm, seed, out, path, res) -> None:
    from mimjax.train import pretrain

    if arm == "random":
        if not workdir_lib.has_checkpoint(path):
            random_encoder_dir(c, seed, path)
        res["pretrain"] = {"steps": 0, "wall_s": 0.0}
        return
    from mimjax.train.checkpoint import complete_steps

    t0 = time.monotonic()
    pretrain.train(pretrain_config(c, arm, seed, out), path)
    losses = [r["loss"] for r in report.metrics_rows(path) if "loss" in r]
    res["pretrain"] = {"wall_s": res.get("pretrain_partial_s", 0.0) + time.monotonic() - t0,
                       "final_loss": losses[-1] if losses else None,
                       "steps": max(complete_steps(workdir_lib.checkpoints_dir(path)))}


def _stage_probe(c, arm, seed, out, path, res) -> None:
    from mimjax.data.labelled import labelled_sources
    from mimjax.models import model_from_config

    model = model_from_config(workdir_lib.model_config(path))
    params = workdir_lib.load_params(path)["encoder"]
    train, test = labelled_sources(c.data.source, train_split=c.data.train_split, test_split=c.data.test_split)
    (ftr, ytr), (fte, yte) = (evaluate.extract(model.encoder, params, s) for s in (train, test))
    for pool, suffix in (("token", ""), ("avg", "_avg")):
        res["linprobe" + suffix] = evaluate.linear_probe(ftr[pool], ytr, fte[pool], yte, c.probe, seed=seed)
        res["knn" + suffix] = evaluate.knn(ftr[pool], ytr, fte[pool], yte, k=c.knn.k, temperature=c.knn.temperature)


def _stage_finetune(c, arm, seed, out, path, res) -> None:
    from mimjax.eval import finetune

    f = c.finetune.copy_and_resolve_references()
    f.seed = seed
    f.data.source, f.data.train_split, f.data.test_split = c.data.source, c.data.train_split, c.data.test_split
    r = finetune.finetune(f, path, os.path.join(path, "finetune"))
    if r.get("preempted"):
        raise Interrupted(f"the fine-tune of {arm} seed {seed} was stopped at step {r['steps']}; rerun to resume")
    res["finetune"] = r


def _stage_premise(c, arm, seed, out, path, res) -> None:
    res["premise"] = evaluate.premise(c, path, from_ema=(arm == "gpa_ema"))


STAGE_RUNNERS = {"pretrain": _stage_pretrain, "probe": _stage_probe, "finetune": _stage_finetune,
                 "premise": _stage_premise}


def _stage_config(c, stage: str) -> dict:
    """The settings a stage's stored result depends on beyond its run (a change reruns it)."""
    return {"probe": {"probe": c.probe.to_dict(), "knn": c.knn.to_dict()}, "finetune": c.finetune.to_dict(),
            "premise": c.premise.to_dict()}.get(stage, {})


def run_one(c, arm: str, seed: int, out: str, index: int, progress: Progress) -> dict:
    """Every stage of one arm x seed not done yet; returns its results (also in RESULT)."""
    path = run_dir(out, arm, seed)
    result_path = os.path.join(path, RESULT)
    res = _load(result_path)
    for stage in Progress.STAGES:
        if stage == "premise" and arm not in PREMISE_ARMS:
            continue
        key = "linprobe" if stage == "probe" else stage
        if key in res and res.get(f"{stage}_config", {}) == _stage_config(c, stage):
            progress.done(arm, seed, stage, None)
            continue
        progress.start(index, arm, seed, stage)
        t0 = time.monotonic()
        try:
            STAGE_RUNNERS[stage](c, arm, seed, out, path, res)
        except Interrupted:
            if stage == "pretrain":  # the time spent so far counts towards the run's wall time
                res["pretrain_partial_s"] = res.get("pretrain_partial_s", 0.0) + time.monotonic() - t0
                _save(result_path, res)
            raise
        res[f"{stage}_config"] = _stage_config(c, stage)
        res[f"{stage}_s"] = time.monotonic() - t0
        progress.done(arm, seed, stage, res[f"{stage}_s"])
        _save(result_path, res)
    return res


def study(c, out: str) -> dict:
    """Runs (or resumes) the study of config `c` in `out`; returns the summary (study.json)."""
    from mimjax.train import checkpoint  # noqa: F401 - Orbax first: its import logs nothing mid-study

    workdir_lib.require_path(out, "--out")
    arms, seeds = validate(c)
    out = os.path.abspath(out)
    if workdir_lib.is_run_dir(out):
        raise ConfigError(f"--out {out!r} is a run directory; the study needs a directory of its own")
    os.makedirs(out, exist_ok=True)
    if not jax.config.jax_compilation_cache_dir:  # seeds and arms share programs: compile each once
        jax.config.update("jax_compilation_cache_dir", os.path.join(out, ".jax_cache"))
    progress = Progress(arms, seeds)
    info = {"machine": machine(), "config": c.to_dict(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                                   time.gmtime())}
    t0 = time.monotonic()
    results: dict = {arm: {} for arm in arms}
    index = 0
    for seed in seeds:  # seeds outermost: pairs complete early
        for arm in arms:
            index += 1
            try:
                results[arm][seed] = run_one(c, arm, seed, out, index, progress)
            except (Interrupted, DiskFullError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - one arm's failure is recorded, the others go on
                line = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.error("study: %s seed %d failed (%s); the study goes on", arm, seed, line)
                results[arm][seed] = {"error": line}
            report.write(out, results, {**info, "wall_s": time.monotonic() - t0}, c)
    return report.write(out, results, {**info, "wall_s": time.monotonic() - t0}, c)
