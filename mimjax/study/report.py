"""The study's results: S/study.json (every arm x seed x metric, the summaries, the paired
differences against MAE with 95% intervals, the premise, the machine and config),
S/study.md (the tables) and S/study.png (bars with error bars, loss curves per arm)."""
from __future__ import annotations

import json
import os

import numpy as np

from mimjax import paths
from mimjax.study.stats import paired_difference, summary

METRICS = {"linprobe": "linear probe (cls)", "linprobe_avg": "linear probe (avg)", "finetune": "fine-tune",
           "knn": "k-NN (cls)", "knn_avg": "k-NN (avg)"}
PREMISE = {"auc": "GPA-score AUC for the garment", "hard_foreground_share": "hard picks on the garment",
           "foreground_share": "garment share of all patches"}
TEACHER_COST = {"mae": "none", "random": "none (no pre-training)",
                "gpa_teacher": "the mae run first, then a teacher forward pass every step",
                "gpa_feature": "the mae run first, then a teacher forward pass every step",
                "attmask": "the mae run first, then a teacher forward pass every step",
                "gpa_ema": "a teacher forward pass and an EMA update every step"}


def metric(res: dict, name: str):
    r = res.get(name)
    return None if not isinstance(r, dict) or r.get("top1") is None else float(r["top1"])


def summarize(results: dict) -> dict:
    """results {arm: {seed: the run's study_eval.json}} -> the summaries of study.json."""
    out = {"summary": {}, "differences": {}, "premise": {}, "pretrain_s": {}, "failed": {}}
    mae = results.get("mae", {})
    for arm, runs in results.items():
        ok = {s: r for s, r in runs.items() if "error" not in r}
        out["failed"][arm] = {str(s): r["error"] for s, r in runs.items() if "error" in r}
        out["summary"][arm] = {m: summary([v for r in ok.values() if (v := metric(r, m)) is not None])
                               for m in METRICS}
        out["pretrain_s"][arm] = summary([r["pretrain"]["wall_s"] for r in ok.values() if "pretrain" in r])
        if any("premise" in r for r in ok.values()):
            out["premise"][arm] = {k: summary([r["premise"][k] for r in ok.values()
                                               if r.get("premise", {}).get(k) is not None]) for k in PREMISE}
        if arm == "mae":
            continue
        diffs = {}
        for m in METRICS:  # paired by seed: only seeds where both have the metric
            pairs = [(metric(r, m), metric(mae[s], m)) for s, r in ok.items()
                     if s in mae and metric(r, m) is not None and metric(mae[s], m) is not None]
            diffs[m] = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
        out["differences"][arm] = diffs
    lp = out["summary"].get("mae", {}).get("linprobe", {}), out["summary"].get("random", {}).get("linprobe", {})
    if lp[0].get("mean") is not None and lp[1].get("mean") is not None:
        gap = lp[0]["mean"] - lp[1]["mean"]
        out["validity"] = {"mae_minus_random_linprobe": gap, "passed": gap >= 2.0}
    return out


def _cell(s: dict, digits: int = 1) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" + (f" (n={s['n']})" if s["n"] < 3 else "")


def _diff(d: dict) -> str:
    if d.get("mean") is None:
        return "-"
    if d["ci"] is None:
        return f"{d['mean']:+.2f} (n={d['n']}, no interval)"
    verdict = "" if d["significant"] else ", not significant"
    return f"{d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]{verdict}"


def markdown(doc: dict) -> str:
    """study.md: the tables of a study.json document."""
    m, c = doc["machine"], doc["config"]
    p = c["pretrain"]
    seeds = c["seeds"]
    lines = [f"# mimjax study: {c['data']['source']}", "",
             f"ViT width {p['model']['width']}, {p['model']['depth']} blocks, {p['model']['img_size']} px, patch "
             f"{p['model']['patch_size']}; {p['total_steps']} pre-training steps of {p['batch_size']} images; seeds "
             f"{seeds}. Machine: {m['cpu']} ({m['cores']} cores), {m['platform']}, JAX {m['jax']}, commit "
             f"{m['commit'] or '?'}. Wall time {doc['wall_s'] / 60:.1f} min (this invocation); stages "
             f"{doc['stage_seconds'] / 60:.1f} min in all.", "",
             "Top-1 accuracy (%) on the test images, mean ± std over seeds:", "",
             "| arm | " + " | ".join(METRICS.values()) + " | pre-train (s) | teacher's extra cost |",
             "|---" * (len(METRICS) + 3) + "|"]
    for arm, s in doc["summary"].items():
        lines.append(f"| {arm} | " + " | ".join(_cell(s[k]) for k in METRICS) +
                     f" | {_cell(doc['pretrain_s'][arm], 0)} | {TEACHER_COST[arm]} |")
    lines += ["", "Paired difference against MAE (same seeds), mean [95% confidence interval]:", "",
              "| arm - mae | " + " | ".join(METRICS.values()) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for arm, d in doc["differences"].items():
        lines.append(f"| {arm} | " + " | ".join(_diff(d[k]) for k in METRICS) + " |")
    if doc["premise"]:
        lines += ["", f"The premise: the teacher's per-patch GPA score (block {p['teacher']['block']}, head "
                  f"{p['teacher']['head']}) against the garment (patches whose mean pixel > "
                  f"{c['premise']['threshold']:g}), {c['premise']['num_images']} test images; 0.5 AUC is chance. "
                  f"The hard picks at the end of the schedule against the garment's share of all patches (what "
                  f"random picks would hit):", "",
                  "| teacher | " + " | ".join(PREMISE.values()) + " |", "|---" * (len(PREMISE) + 1) + "|"]
        names = {"mae": "mae (frozen, end of its run)", "gpa_ema": "gpa_ema's EMA teacher (end)",
                 "random": "random encoder (control)"}
        for arm, s in doc["premise"].items():
            lines.append(f"| {names.get(arm, arm)} | " + " | ".join(_cell(s[k], 3) for k in PREMISE) + " |")
    v = doc.get("validity")
    if v:
        lines += ["", f"Validity: MAE's linear probe (cls) is {v['mae_minus_random_linprobe']:+.1f} points over the "
                  f"random encoder ({'at least' if v['passed'] else 'less than'} the 2 points the study needs to say "
                  f"anything about masking)."]
    for arm, failed in doc["failed"].items():
        for seed, err in failed.items():
            lines.append(f"\nFailed: {arm} seed {seed}: {err}")
    return "\n".join(lines) + "\n"


def metrics_rows(run_dir: str) -> list[dict]:
    """The complete rows of a run's metrics.jsonl ([] without one)."""
    rows = []
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut by a kill
                    pass
    except OSError:
        pass
    return rows


def loss_curves(out: str, results: dict) -> dict:
    """{arm: (steps, mean loss over seeds)} from each run's metrics.jsonl."""
    curves = {}
    for arm, runs in results.items():
        per_seed = []
        for seed in runs:
            rows = metrics_rows(os.path.join(out, arm, f"seed_{seed}"))
            if rows:
                per_seed.append({r["step"]: r["loss"] for r in rows if "loss" in r and "step" in r})
        common = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
        if common:
            curves[arm] = (common, [float(np.mean([d[s] for d in per_seed])) for s in common])
    return curves


def plot(path: str, doc: dict, curves: dict) -> None:
    """study.png: per metric, one bar per arm (mean, error bar = std over seeds); and the
    pre-training loss per arm (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(doc["summary"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        s = doc["summary"][arm]
        means = [s[k]["mean"] or 0.0 for k in METRICS]
        stds = [s[k]["std"] or 0.0 for k in METRICS]
        ax.bar(np.arange(len(METRICS)) + i * width - 0.4 + width / 2, means, width, yerr=stds, capsize=2, label=arm)
    values = [s[k]["mean"] for s in doc["summary"].values() for k in METRICS if s[k]["mean"] is not None]
    if values:
        ax.set_ylim(max(0.0, min(values) - 10), min(100.0, max(values) + 3))
    ax.set_xticks(np.arange(len(METRICS)), list(METRICS.values()))
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=8)
    ax.set_title("accuracy, mean ± std over seeds")
    for arm, (steps, loss) in curves.items():
        ax2.plot(steps, loss, label=arm)
    ax2.set_xlabel("step")
    ax2.set_ylabel("pre-training loss (mean over seeds)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: str, results: dict, info: dict, config) -> dict:
    """Writes S/study.{json,md,png} of the results so far; returns the study.json document."""
    stage_s = sum(v for runs in results.values() for r in runs.values() for k, v in r.items()
                  if k.endswith("_s") and k != "pretrain_partial_s" and isinstance(v, (int, float)))
    doc = {**info, "stage_seconds": stage_s, **summarize(results),
           "runs": {arm: {str(s): r for s, r in runs.items()} for arm, runs in results.items()}}
    paths.write_text(os.path.join(out, "study.json"), json.dumps(doc, indent=2, default=float))
    paths.write_text(os.path.join(out, "study.md"), markdown(doc))
    plot(os.path.join(out, "study.png"), doc, loss_curves(out, results))
    return doc
