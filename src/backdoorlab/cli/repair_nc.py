"""``backdoorlab repair {nc-unlearn,nc-prune} MODEL``: Neural Cleanse's patching (issue 3).

Both reverse-engineer the trigger with Neural Cleanse on the defender's clean set (``--nc-*``
flags set its budget), then unlearn it (fine-tune 1 epoch with 20% of the clean set stamped, true
labels kept; default clean set 10% of the training data, as the paper) or prune the penultimate
neurons it excites.  ASR is measured with the true trigger when a ground-truth file is known,
else with the reversed one (``Repaired.summary["trigger"]`` / ``["target"]``).
"""
from __future__ import annotations

from . import _common as c

METHODS = {
    "nc-unlearn": ("NCUnlearn", "Neural Cleanse unlearning: fine-tune with the reversed trigger stamped, "
                                "true labels kept (Wang et al. 2019)", 0.10),
    "nc-prune": ("NCPrune", "Neural Cleanse pruning: switch off the penultimate neurons the reversed "
                            "trigger excites (Wang et al. 2019)", 0.05),
}
NC_FLAGS = ("epochs", "batch_size", "batches_per_epoch", "init_cost", "patience", "early_stop_patience", "lr")


def register(sub, groups) -> None:
    from ..defenses.mitigate import MITIGATORS

    for method, (_, help_, fraction) in METHODS.items():
        p = groups["repair"].add_parser(method, help=help_, description=help_)
        c.add_repair_args(p)
        p.set_defaults(clean_fraction=fraction)
        c.add_params(p, MITIGATORS[method])
        g = p.add_argument_group("Neural Cleanse (trigger reverse-engineering) parameters")
        for f in NC_FLAGS:
            g.add_argument("--nc-" + f.replace("_", "-"), dest="nc_" + f, default=None,
                           type=float if f in ("init_cost", "lr") else int)
        p.set_defaults(func=_handler(method))


def nc_detector(args):
    from ..defenses.detect import NeuralCleanse

    kw = {f: getattr(args, "nc_" + f) for f in NC_FLAGS if getattr(args, "nc_" + f, None) is not None}
    return NeuralCleanse(**kw)


def _handler(method: str):
    def run(args) -> int:
        from ..defenses.mitigate import MITIGATORS

        mitigator = MITIGATORS[method](detector=nc_detector(args), **c.params_from_args(args))
        return c.run_repair(args, mitigator, method)

    return run
