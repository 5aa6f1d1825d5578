"""``backdoorlab scan MODEL``: is this model backdoored?  Runs one or more detectors of
``defenses.detect.DETECTORS`` (``--detectors nc,dl-tnd,df-tnd``) on a small clean set.

Prints a verdict table per detector, writes the recovered triggers as PNGs and an anomaly-index
plot (matplotlib, optional) into ``--out``; ``--json`` prints ``{"backdoored", "suspects",
"anomaly_index", ..., "detectors": {...}}``; ``--fail-on-detect`` exits with code 3 when any
detector says backdoored.

A detector's evidence takes part through duck typing, so new detectors need no change here:
``evidence.to_json() -> dict`` (into the JSON), ``evidence.table() -> (columns, rows)`` (a per-label
table), ``evidence.labels`` with ``evidence.triggers`` (PNGs) and ``evidence.anomaly_indices``
(the plot).  Hyper-parameters: ``--set nc.epochs=50`` (repeatable, DETECTOR.FIELD=VALUE).

With several detectors, one summary table lists each detector's verdict, suspects, score and
seconds plus the combined verdict of ``defenses.detect.combined.Combined`` (``--rule lead``: the
data-richest detector that ran decides, nc > dl-tnd > df-tnd; ``vote``: at least half of them;
``any`` / ``all``), which is also the top-level verdict of ``--json`` and
``--fail-on-detect``.  ``--no-data`` loads no dataset: only data-free detectors (df-tnd) run, the
others are listed as skipped.

``--reference CLEAN.safetensors`` (repeatable): models the auditor knows to be clean, of the same task.
Each detector first scans them with the same data and seed and takes the largest of their scores as
its threshold (``defenses.detect.calibrate``), instead of its preset; the JSON and the notes show the
reference scores.  DL-TND's preset (0.75, the authors' CIFAR-10 value, with the reach rule) flags 0-1 of
10 clean MNIST models per population (4-5 with the official plain-cosine rule; BENCHMARKS.md).  When
every reference scores DL-TND's floor (-1: no label reached) the preset is kept (the note says so).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from . import _common as c

ALIASES = {"nc": "neural-cleanse"}
EXIT_DETECTED = 3


def register(sub, groups) -> None:
    p = sub.add_parser("scan", help="inspect a model for backdoors (Neural Cleanse, ...)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model file (.safetensors with its .json sidecar)")
    p.add_argument("--detectors", default="nc",
                   help="comma-separated detectors: nc (= neural-cleanse) or any name in DETECTORS (default nc)")
    p.add_argument("--out", default=None, help="folder for trigger PNGs and the plot (default MODEL.scan/)")
    p.add_argument("--no-files", action="store_true", help="write no PNGs and no plot")
    p.add_argument("--fail-on-detect", action="store_true", help="exit with code 3 when a backdoor is found")
    p.add_argument("--clean-fraction", type=float, default=0.05,
                   help="fraction of the clean training split the defender holds (default 0.05)")
    p.add_argument("--clean-per-class", type=int, default=None,
                   help="instead of --clean-fraction: this many clean samples per class")
    p.add_argument("--no-data", action="store_true",
                   help="use no clean data: run only data-free detectors (df-tnd), skip the others")
    p.add_argument("--rule", default="lead", choices=["lead", "agree", "vote", "any", "all"],
                   help="how several detectors' verdicts combine (default lead: the data-richest detector "
                        "that ran decides; agree: at least 2 name the same label; vote: at least half of them)")
    p.add_argument("--reference", dest="references", action="append", default=[], metavar="MODEL",
                   help="a model known to be clean (same task); repeatable.  Each detector's threshold is set to "
                        "the largest score among the references (defenses.detect.calibrate) before MODEL is scanned")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="DETECTOR.FIELD=VALUE",
                   help="a detector hyper-parameter, e.g. nc.epochs=50 (repeatable)")
    c.add_common(p)
    p.set_defaults(func=cmd_scan)


def detector_names(spec: str) -> list[str]:
    from ..defenses.detect import DETECTORS

    names = []
    for raw in (s.strip() for s in spec.split(",") if s.strip()):
        name = ALIASES.get(raw, raw)
        if name not in DETECTORS:
            raise ValueError(f"scan --detectors must name entries of {sorted(set(DETECTORS) | set(ALIASES))}; "
                             f"got {raw!r}.")
        names.append(name)
    if not names:
        raise ValueError("scan --detectors must name at least one detector; got ''.")
    return names


def build_detector(name: str, settings: list[str]):
    """The registry class ``name`` with the ``--set`` values that address it (by name or alias)."""
    from ..defenses.detect import DETECTORS

    cls = DETECTORS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for s in settings:
        key, eq, value = s.partition("=")
        det, dot, field = key.partition(".")
        if not (eq and dot):
            raise ValueError(f"scan --set must look like DETECTOR.FIELD=VALUE; got {s!r}.")
        if ALIASES.get(det, det) != name:
            continue
        if field.replace("-", "_") not in fields:
            raise ValueError(f"scan --set: {cls.__name__} has no field {field!r}; fields: {sorted(fields)}.")
        f = fields[field.replace("-", "_")]
        kw[f.name] = _parse(value, f.default)
    return cls(**kw)


def _parse(value: str, default):
    if isinstance(default, bool):
        return c._parse_bool(value)
    for t in (int, float):
        if isinstance(default, t):
            return t(value)
    if default is None and value.lstrip("-").replace(".", "", 1).isdigit():
        return float(value) if "." in value else int(value)
    return value


def cmd_scan(args: argparse.Namespace) -> int:
    from ..data import clean_subset
    from ..defenses.detect import calibrate

    names = detector_names(args.detectors)
    detectors = {n: build_detector(n, args.settings) for n in names}
    model, meta = c.load_model(args, args.model)
    g = c.generator(args)
    clean, skipped = None, [n for n, d in detectors.items() if args.no_data and not getattr(d, "data_free", False)]
    detectors = {n: d for n, d in detectors.items() if n not in skipped}
    if not detectors:
        raise ValueError(f"scan --no-data: {', '.join(skipped)} need clean data; add a data-free detector "
                         "(--detectors df-tnd) or drop --no-data.")
    if not args.no_data:
        train = c.load_split(args, "train", meta)
        clean = (clean_subset(train, per_class=args.clean_per_class, generator=g) if args.clean_per_class
                 else clean_subset(train, fraction=args.clean_fraction, generator=g))
    refs = load_references(args, meta)
    out = Path(args.out) if args.out else Path(args.model).with_name(Path(args.model).stem + ".scan")
    t_all = time.perf_counter()
    results, files, calibrations = {}, [], {}
    for name, det in detectors.items():
        if refs:   # right before this detector's scan: the references see the generator state it will see
            with c.progress(args, f"calibrate ({name})") as cb:
                calibrations[name] = calibrate(det, refs, clean, generator=g, progress=cb)
            det = detectors[name] = calibrations[name].detector
        t0 = time.perf_counter()
        with c.progress(args, f"scan ({name})") as cb:
            v = det.detect(model, clean, generator=g, progress=cb)
        results[name] = (v, time.perf_counter() - t0)
        if not args.no_files:
            files += write_files(out, name, v)
    data = scan_json(results, files)
    combined = combine(results, detectors, args.rule, skipped)
    if combined is not None:
        data.update(backdoored=combined.backdoored, suspects=list(combined.suspects), rule=args.rule,
                    combined={"backdoored": combined.backdoored, "suspects": list(combined.suspects),
                              "score": combined.score, "threshold": combined.threshold,
                              "quorum": combined.evidence.quorum, "skipped": skipped})
    implied = {name: getattr(cal.detector, "implied_thresholds", dict)() for name, cal in calibrations.items()}
    for name, cal in calibrations.items():   # DF-TND's margin thresholds move with T: implied_thresholds
        data["detectors"][name]["calibration"] = {"references": list(args.references), "scores": list(cal.scores),
                                                  "threshold": cal.threshold, "preset": cal.preset,
                                                  **({"note": cal.note} if cal.note else {}), **implied[name]}
    data.update(model=str(args.model), clean_samples=0 if clean is None else len(clean),
                seconds=round(time.perf_counter() - t_all, 3))
    if args.json:
        c.emit(args, data)
    else:
        for name, cal in calibrations.items():
            x = implied[name]
            c.emit(args, {}, notes=[f"{name}: threshold {cal.threshold:.4g} (preset {cal.preset:g}) = "
                                    + (f"the preset ({cal.note}); scores" if cal.note else "the largest score")
                                    + f" of {len(cal.scores)} reference model(s): "
                                    + ", ".join(f"{s:.4g}" for s in cal.scores)
                                    + ("" if not x else f"; the margin alone now flags above "
                                       f"{x['margin_threshold']:.4g} logits, the margin per mask pixel above "
                                       f"{x['efficiency_threshold']:.4g}")])
        render(args, results, files)
        if combined is not None:
            render_summary(args, results, combined)
    return EXIT_DETECTED if args.fail_on_detect and data["backdoored"] else 0


def load_references(args, meta: dict) -> list:
    """``--reference``: the known-clean models, refused when they belong to another task."""
    refs = []
    for path in args.references:
        ref, ref_meta = c.load_model(args, path)
        if _task(ref_meta) != _task(meta):
            raise ValueError(f"scan --reference {path}: its dataset ({_dataset_name(ref_meta)}) differs from the "
                             f"scanned model's ({_dataset_name(meta)}); references must be models of the same task.")
        refs.append(ref)
    return refs


def _task(meta: dict) -> tuple:
    ds = meta.get("dataset") or {}
    return tuple(str(ds.get(k)) for k in ("name", "input_shape", "num_classes"))


def _dataset_name(meta: dict) -> str:
    return "/".join(_task(meta))


def scan_json(results: dict, files: list) -> dict:
    per = {}
    for name, (v, sec) in results.items():
        ev = v.evidence.to_json() if hasattr(v.evidence, "to_json") else {}
        per[name] = {"backdoored": v.backdoored, "score": v.score, "threshold": v.threshold,
                     "suspects": list(v.suspects), "seconds": round(sec, 3), "evidence": ev}
    first = next(iter(per.values()))
    top = {"backdoored": any(d["backdoored"] for d in per.values()),
           "suspects": sorted({s for d in per.values() for s in d["suspects"]}),
           "score": first["score"], "threshold": first["threshold"]}
    for d in per.values():  # per-label statistics of the first detector that has them
        for key in ("anomaly_index", "l1_norms", "labels"):
            if key in d["evidence"] and key not in top:
                top[key] = d["evidence"][key]
    top.update(detectors=per, files=[str(f) for f in files])
    return top


def combine(results: dict, detectors: dict, rule: str, skipped: list):
    """The combined verdict (``Combined.combine``) when more than one detector was asked for."""
    from ..defenses.detect.combined import Combined

    if len(results) + len(skipped) < 2:
        return None
    comb = Combined(detectors=tuple(detectors.items()), rule=rule)
    return comb.combine({n: v for n, (v, _) in results.items()},
                        {n: sec for n, (_, sec) in results.items()}, tuple(skipped))


def render_summary(args, results: dict, combined) -> None:
    ev = combined.evidence
    cols, rows = ev.table()
    rows.append([f"combined ({ev.rule})" if ev.rule.startswith("lead") else
                 f"combined ({ev.rule}, {ev.quorum} of {len(ev.verdicts)})",
                 "BACKDOORED" if combined.backdoored else "clean",
                 ",".join(map(str, combined.suspects)) or "-", round(combined.score, 4),
                 round(combined.threshold, 4), round(sum(sec for _, sec in results.values()), 2)])
    c.emit(args, {}, title="scan summary", rows=rows, columns=cols)


def render(args, results: dict, files: list) -> None:
    for name, (v, sec) in results.items():
        ev = v.evidence
        verdict = (f"BACKDOORED (suspected target {', '.join(map(str, v.suspects))})" if v.backdoored
                   else "no backdoor found")
        title = f"scan {name}: {verdict}; score {v.score:.2f} vs threshold {v.threshold:.2f} ({sec:.1f} s)"
        if hasattr(ev, "table"):
            cols, rows = ev.table()
            c.emit(args, {}, title=title, rows=rows, columns=cols)
        else:
            c.emit(args, {}, title=title)
    if files:
        c.emit(args, {}, notes=[f"wrote {len(files)} files into {Path(files[0]).parent}/"])


def write_files(out: Path, name: str, verdict) -> list[Path]:
    """PNGs of each recovered trigger (m*Δ and m) and the anomaly-index plot, when available."""
    from ..io import write_png

    ev, files = verdict.evidence, []
    labels, triggers = getattr(ev, "labels", None), getattr(ev, "triggers", None)
    if labels is not None and triggers:
        for t, trig in zip(labels, triggers):
            img = trig.image()
            scale = max(1, 96 // img.shape[-1])
            files.append(write_png(out / f"{name}_label{t}_trigger.png", img, scale))
            if hasattr(trig, "mask"):
                files.append(write_png(out / f"{name}_label{t}_mask.png", trig.mask, scale))
    if labels is not None and getattr(ev, "anomaly_indices", None) is not None:
        p = anomaly_plot(out / f"{name}_anomaly_index.png", labels, ev.anomaly_indices,
                         getattr(ev, "flagged", verdict.suspects), verdict.threshold, name)
        if p is not None:
            files.append(p)
    return files


def anomaly_plot(path: Path, labels, indices, flagged, threshold: float, name: str) -> Path | None:
    """Bar chart of the anomaly index per label (flagged labels in red); None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io as _io

    from ..io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(labels) + 1.5), 3.0))
    colors = ["tab:red" if t in flagged else "tab:blue" for t in labels]
    ax.bar([str(t) for t in labels], list(indices), color=colors)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("label")
    ax.set_ylabel("anomaly index")
    ax.set_title(f"{name}: anomaly index per label")
    ax.legend(loc="upper right")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def demo_stage(args, record, *, clean, backdoored, goal, train, test, out) -> None:
    """``backdoorlab demo`` stage: Neural Cleanse scans the backdoored model and its clean twin,
    then unlearning with the reversed trigger repairs the backdoored one (digits, a few seconds)."""
    from ..data import clean_subset
    from ..defenses.detect import NeuralCleanse
    from ..defenses.mitigate import NCUnlearn
    from ..io import save_model
    from ..metrics import evaluate

    held = clean_subset(train, fraction=0.3, generator=c.generator(args))
    nc = NeuralCleanse(epochs=40, batches_per_epoch=5, batch_size=16, patience=2, early_stop_patience=4)
    verdicts = {}
    for name, model in (("backdoored", backdoored), ("clean", clean)):
        t = time.perf_counter()
        v = nc.detect(model, held, generator=c.generator(args))
        verdicts[name] = v
        result = (f"BACKDOORED, target {', '.join(map(str, v.suspects))}" if v.backdoored else "no backdoor found")
        record("scan (neural cleanse)", name, f"{result}; anomaly index {v.score:.2f}", time.perf_counter() - t,
               backdoored=v.backdoored, suspects=list(v.suspects), anomaly_index=v.score)
    v = verdicts["backdoored"]
    ev = v.evidence
    target = v.suspects[0] if v.suspects else ev.smallest
    t = time.perf_counter()
    repaired = NCUnlearn(trigger=ev.trigger_for(target), target=target, epochs=3, lr=0.02).repair(
        backdoored, held, generator=c.generator(args)).model
    e = evaluate(repaired, test, goal)
    save_model(Path(out) / "badnets.nc-unlearn.safetensors", repaired, dataset=train.info.to_json(),
               extra={"method": "nc-unlearn"})
    record("repair nc-unlearn", "backdoored", f"CA {c.pct(e.clean_accuracy)}, ASR {c.pct(e.attack_success_rate)}",
           time.perf_counter() - t, clean_accuracy=e.clean_accuracy, attack_success_rate=e.attack_success_rate)
