"""``backdoorlab purify METHOD MODEL``: put an input purifier in front of the model and report clean
accuracy and attack success rate before / after purification.

One sub-command per ``defenses.filter.PURIFIERS`` entry (flip, shrink-pad, bit-depth, median,
autoencoder, februus, ...).  Purifiers that learn (autoencoder, Februus) are first fitted on the
defender's clean set (``--clean-fraction``), then purify the test inputs."""
from __future__ import annotations

import argparse
import time


from . import _common as c
from .filter import _plain, add_model_args, clean_set, eval_inputs, with_seed


def register(sub, groups) -> None:
    from ..defenses.filter import PURIFIERS

    grp = groups["purify"]
    for name, cls in PURIFIERS.items():
        if name in grp.choices:
            continue
        doc = (cls.__doc__ or name).strip().splitlines()[0]
        p = grp.add_parser(name, help=doc, description=doc)
        add_model_args(p, "a learning purifier (autoencoder, februus) is fitted on it")
        p.add_argument("--n-test", type=int, default=0, help="test inputs evaluated (default 0 = all)")
        c.add_params(p, cls, skip=("seed",))
        p.set_defaults(func=cmd_purify, purifier_name=name, purifier_cls=cls)


def cmd_purify(args: argparse.Namespace) -> int:
    from .._stats import wilson_interval
    from .._torch import predict

    name, cls = args.purifier_name, args.purifier_cls
    purifier = cls(**with_seed(cls, c.params_from_args(args), args))
    model, meta = c.load_model(args, args.model)
    train, test = c.load_split(args, "train", meta), c.load_split(args, "test", meta)
    g = c.generator(args)
    t0 = time.perf_counter()
    fitted = purifier
    if callable(getattr(purifier, "fit", None)):  # learning purifiers train on the defender's clean set
        clean = clean_set(args, train, g)
        with c.progress(args, f"fit {name}") as cb:
            fitted = purifier.fit(model, clean, generator=g, progress=cb)
    t_fit = time.perf_counter() - t0
    truth = c.ground_truth(args.model, args.truth)
    x, y, xs, ts = eval_inputs(test, truth[0] if truth else None, args.n_test, g)

    def rate(pred, want):
        k = int((pred == want.to(pred.device)).sum())
        return k / len(want), wilson_interval(k, len(want))

    t0 = time.perf_counter()
    xp = fitted.purify(model, x)
    per_input = (time.perf_counter() - t0) / max(1, len(x))
    ca0, ca = rate(predict(model, x), y), rate(predict(model, xp), y)
    data = {"method": name, "params": _plain(purifier), "n_clean": len(x), "fit_seconds": round(t_fit, 3),
            "seconds_per_input": per_input, "clean_accuracy_before": ca0[0], "clean_accuracy_after": ca[0],
            "clean_accuracy_after_ci": ca[1]}
    rows = [["clean accuracy", c.pct(ca0[0]), c.pct(ca[0])]]
    notes = [f"{len(x)} clean test inputs; fit {t_fit:.1f} s; {1e3 * per_input:.2f} ms per input to purify"]
    if xs is not None and len(xs):
        asr0, asr = rate(predict(model, xs), ts), rate(predict(model, fitted.purify(model, xs)), ts)
        data.update(n_stamped=len(xs), attack_success_rate_before=asr0[0], attack_success_rate_after=asr[0],
                    attack_success_rate_after_ci=asr[1])
        rows.append(["attack success rate", c.pct(asr0[0]), c.pct(asr[0])])
    else:
        notes.append("no ground-truth file: ASR not measured (pass --truth).")
    c.emit(args, data, title=f"purify --method {name} on {test.info.name}", rows=rows,
           columns=["metric", "before", "after"], notes=notes)
    return 0
