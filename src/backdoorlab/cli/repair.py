"""``backdoorlab repair {finetune,fine-pruning,nad,i-bau} MODEL``: model sanitization (issue 4).

Each sub-command builds its Mitigator from one flag per hyper-parameter and hands it to the shared
``run_repair`` (CA / ASR / RA before and after, the new model file, ``--json``)."""
from __future__ import annotations

from . import _common as c

METHODS = {
    "finetune": "retraining: fine-tune on the clean set (seed 000, exercise 2)",
    "fine-pruning": "Fine-Pruning (Liu et al. 2018): prune dormant last-conv channels, then fine-tune",
    "nad": "Neural Attention Distillation (Li et al. 2021): distil a fine-tuned teacher's attention",
    "i-bau": "I-BAU (Zeng et al. 2022): adversarial unlearning with the implicit hypergradient",
}


def register(sub, groups) -> None:
    from ..defenses.mitigate import MITIGATORS

    for method, help_ in METHODS.items():
        cls = MITIGATORS[method]
        p = groups["repair"].add_parser(method, help=help_, description=help_)
        c.add_repair_args(p)
        c.add_params(p, cls)
        p.set_defaults(func=_handler(method))


def _handler(method: str):
    def run(args) -> int:
        from ..defenses.mitigate import MITIGATORS

        mitigator = MITIGATORS[method](**c.params_from_args(args))
        return c.run_repair(args, mitigator, method)

    return run
