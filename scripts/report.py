#!/usr/bin/env python3
"""report.py RUN_DIR: writes RUN_DIR/report.md from a run's files (standard library only).

Resolved config, data stats (examples *.stats.json, features metadata counts printed by the
stages are not re-read), the training curve, EM/F1 (HasAns/NoAns and best thresholds for
v2.0), and wall time and throughput per stage (timings.tsv, train_summary.json,
eval/metrics.json).
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    run = sys.argv[1]
    p = lambda *parts: os.path.join(run, *parts)
    out = [f"# Run report: {os.path.basename(os.path.normpath(run))}", ""]

    timings = {}
    if os.path.exists(p("timings.tsv")):
        for line in open(p("timings.tsv")):
            stage, _, secs = line.rstrip("\n").partition("\t")
            timings[stage] = float(secs)

    out += ["## Data", "", "| split | source | questions | articles | paragraphs | unanswerable |", "|---|---|---|---|---|---|"]
    for split in ("train", "dev"):
        s = load(p(f"{split}.examples.stats.json"))
        if s:
            st = s.get("stats", {})
            out.append(f"| {split} | {s.get('source_file')} (SQuAD {s.get('squad_version')}) | {st.get('questions')} | "
                       f"{st.get('articles')} | {st.get('paragraphs')} | {st.get('unanswerable')} |")
    out.append("")

    summary = load(p("train_summary.json"))
    out += ["## Training", ""]
    if summary:
        out += [f"- {summary['steps']} optimizer steps over {summary['epochs']} epoch(s), {summary['features']} features",
                f"- mean training loss {summary['train_loss']:.4f}",
                f"- {summary['train_seconds']:.0f} s training, {summary['train_features_per_second']:.2f} features/s",
                f"- peak RSS {summary.get('peak_rss_mib') or 0:.0f} MiB", ""]
    if os.path.exists(p("training_curve.svg")):
        out += ["![training curve](training_curve.svg)", ""]

    ev = load(p("eval", "metrics.json"))
    out += ["## Evaluation", ""]
    if ev:
        m = ev["metrics"]
        out += [f"{ev['examples']} dev questions, {ev['features']} features, "
                f"forward {ev['seconds_forward']:.1f} s ({ev['features_per_second']:.1f} features/s)", "",
                "| metric | value |", "|---|---|"]
        out += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in m.items()]
        out.append("")
    else:
        out += ["(no eval/metrics.json: run `make eval`)", ""]

    if timings:
        # What each stage processed, from the files the stages left, for a throughput column.
        stats = {split: (load(p(f"{split}.examples.stats.json")) or {}).get("stats", {}) for split in ("train", "dev")}
        work = {
            "ingest-train": (stats["train"].get("questions"), "questions"),
            "ingest-dev": (stats["dev"].get("questions"), "questions"),
            "features-train": (summary and summary["features"], "features"),
            "features-dev": (ev and ev["features"], "features"),
            "train": (summary and summary["features"] * summary["epochs"], "features"),
            "eval": (ev and ev["features"], "features"),
        }
        order = list(work) + sorted(set(timings) - set(work))
        out += ["## Wall time per stage", "",
                "Whole command, process start and model loading included.", "",
                "| stage | seconds | processed | per second |", "|---|---|---|---|"]
        for stage in (s for s in order if s in timings):
            secs = timings[stage]
            n, unit = work.get(stage, (None, ""))
            rate = f"{n / secs:.1f} {unit}/s" if n and secs > 0 else ""
            out.append(f"| {stage} | {secs:.1f} | {f'{n} {unit}' if n else ''} | {rate} |")
        out.append("")

    cfg = p("config.yaml")
    if os.path.exists(cfg):
        out += ["## Resolved config", "", "```yaml", open(cfg).read().rstrip(), "```", ""]

    tmp = p(".report.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(out))
    os.replace(tmp, p("report.md"))
    print(p("report.md"))


if __name__ == "__main__":
    main()
