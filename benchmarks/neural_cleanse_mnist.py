"""Neural Cleanse on MNIST BadNets (issue 3): the seeds' patching table, the input filter, pruning,
and the speed of the batched scan against one label at a time, all in one run.

Model: the BadNets CNN trained by ``benchmarks/badnets_mnist.py`` on the 60k MNIST images with the
BadNets pattern (3x3 checkerboard, bottom-right) -> label 0, 10% poison (cached in
``runs/bench-cache/mnist-badnets-2``; trained here for 2 epochs if missing), and its clean twin
``mnist-badnets-0``.  The defender holds 10% of the training set (6,000 images, stratified), the
paper's unlearning budget; Neural Cleanse reverses the trigger on it.  CA / ASR on the 10k test set,
ASR with the true trigger.

    python benchmarks/neural_cleanse_mnist.py [--threads 2] [--equal-epochs 10]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import CACHE, SHARED_DATA, load_avg, md_table, sgemm_gflops, write_result  # noqa: E402

PAPER = {"before": (98.54, 99.90), "reversed": (97.69, 0.57), "original": (97.77, 0.29), "clean": (97.38, 93.37)}


def nc_flops_per_image(model, shape) -> float:
    """FLOPs of one Neural Cleanse image pass: forward + gradient w.r.t. the input (weights frozen)."""
    from torch.utils.flop_counter import FlopCounterMode

    from backdoorlab._torch import frozen

    x = torch.rand(8, *shape, requires_grad=True)
    with frozen(model), FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return fc.get_total_flops() / 8


def kernel_rates(model, shape, fpi, sizes, reps: int = 20) -> list[list[str]]:
    """ms and GFLOP/s of one forward + input-gradient pass at each batch size, float32 and bf16."""
    import copy

    net = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    rows = []
    for n in sizes:
        x = torch.rand(n, *shape).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        cells = [str(n)]
        for bf16 in (False, True):
            def once():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = net(x)
                torch.autograd.grad(out.float().logsumexp(1).sum(), x)
            once()
            t = time.perf_counter()
            for _ in range(reps):
                once()
            dt = (time.perf_counter() - t) / reps
            cells += [f"{1e3 * dt:.1f}", f"{n * fpi / dt / 1e9:.1f}"]
        rows.append(cells)
    return rows


def load_or_train(name: str, trigger_target, info, train):
    from backdoorlab.attacks import BadNets
    from backdoorlab.io import load_ground_truth, load_model, save_ground_truth, save_model, truth_path
    from backdoorlab.models import build
    from backdoorlab.training import fit, init_weights
    from backdoorlab.triggers import PatchTrigger

    path = CACHE / f"{name}.safetensors"
    if path.exists():
        model, _ = load_model(path)
        return model, (load_ground_truth(truth_path(path))[0] if truth_path(path).exists() else None)
    g = torch.Generator().manual_seed(2)
    data, goal = train, None
    if trigger_target:
        p = BadNets(trigger=PatchTrigger.badnets_pattern(info.input_shape), target=0, rate=0.1).poison(train, generator=g)
        data, goal = p.dataset, p.goal
    model = init_weights(build("badnets-cnn", input_shape=info.input_shape, num_classes=10, mean=info.mean,
                               std=info.std), g)
    fit(model, data, epochs=2, batch_size=128, lr=0.05, generator=g)
    save_model(path, model.eval(), dataset=info.to_json(), training={"epochs": 2})
    if goal is not None:
        save_ground_truth(truth_path(path), goal)
    return model, goal


def main() -> None:
    from backdoorlab.data import clean_subset, load_dataset
    from backdoorlab.defenses.detect import NeuralCleanse
    from backdoorlab.defenses.filter import Guard
    from backdoorlab.defenses.filter.nc_filter import NCFilter
    from backdoorlab.defenses.mitigate import NCPrune, NCUnlearn
    from backdoorlab.metrics import evaluate

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--equal-epochs", type=int, default=10, help="epochs per label in the equal-budget comparison")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--twin", action="store_true", help="also scan the clean twin (one more full scan)")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets, to check the script end to end")
    ap.add_argument("--nc-batch-size", type=int, default=32)
    ap.add_argument("--nc-epochs", type=int, default=100)
    ap.add_argument("--nc-patience", type=int, default=5)
    ap.add_argument("--nc-early-stop-patience", type=int, default=10)
    ap.add_argument("--unlearn-lr", type=float, nargs="+", default=[0.01])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    train, test = load_dataset("mnist", "train", SHARED_DATA), load_dataset("mnist", "test", SHARED_DATA)
    info = train.info
    model, goal = load_or_train("mnist-badnets-2", True, info, train)
    twin, _ = load_or_train("mnist-badnets-0", False, info, train)
    clean = clean_subset(train, fraction=0.01 if a.smoke else 0.10, generator=torch.Generator().manual_seed(0))
    if a.smoke:
        test = load_dataset("mnist", "test", SHARED_DATA)
        test.x, test.y = test.x[:1000], test.y[:1000]
        a.equal_epochs = 1
    peak = sgemm_gflops(1024, 3)
    fpi = nc_flops_per_image(model, info.input_shape)
    out = []

    # ---- full scan (default budget, batched, early stopping) ------------------------------------
    nc = NeuralCleanse(epochs=2 if a.smoke else a.nc_epochs, batch_size=a.nc_batch_size, patience=a.nc_patience,
                       early_stop_patience=a.nc_early_stop_patience)
    t = time.perf_counter()
    v = nc.detect(model, clean, generator=torch.Generator().manual_seed(0))
    scan_s = time.perf_counter() - t
    ev = v.evidence
    v_twin, twin_s = None, 0.0
    if a.twin:
        t = time.perf_counter()
        v_twin = nc.detect(twin, clean, generator=torch.Generator().manual_seed(0))
        twin_s = time.perf_counter() - t
    steps = max(ev.steps)
    rate = ev.image_passes * fpi / scan_s / 1e9
    print(f"scan {scan_s:.1f}s backdoored={v.backdoored} suspects={v.suspects}", flush=True)
    twin_line = ("Clean twin: not scanned in this run (`--twin`)." if v_twin is None else
                 f"Clean twin: flagged **{v_twin.backdoored}**, score {v_twin.score:.2f} ({twin_s:.0f} s).")
    rows = [[t_, f"{n:.2f}", f"{ai:.2f}", f"{100 * s:.1f}", st, "yes" if t_ in ev.flagged else ""]
            for t_, n, ai, s, st in zip(ev.labels, ev.l1_norms, ev.anomaly_indices, ev.success_rates, ev.steps)]
    true_l1 = goal.trigger.l1()
    budget = (f"{nc.batch_size} images per label per step, at most {nc.epochs} epochs of {nc.batches_per_epoch} steps, "
              f"patience {nc.patience}, early-stop patience {nc.early_stop_patience}")
    out.append(f"""### Detection and reversed trigger (one full scan: batched, early stopping; {budget})

Backdoored model: flagged **{v.backdoored}**, suspects {list(v.suspects)} (true target {goal.target}),
anomaly index {v.score:.2f} (paper: > 2 for every infected model, > 3 on its six). Reversed mask L1
{ev.l1_norms[ev.labels.index(goal.target)]:.2f} vs the true trigger's {true_l1:.0f} (paper MNIST: 12.00 vs 16).
{twin_line}

{md_table(["label", "L1 norm", "anomaly index", "trigger success % (clean data)", "steps", "flagged"], rows)}
""")

    # ---- speed --------------------------------------------------------------------------------
    if not a.skip_speed:
        n_steps = a.equal_epochs * nc.batches_per_epoch
        rows, ratio, agree = [], {}, {}
        for bf16 in (False, True):
            eq = dict(epochs=a.equal_epochs, early_stop=False, batch_size=a.nc_batch_size, bf16=bf16)
            times, trig_sets = {}, {}
            for batched in (True, False):
                t = time.perf_counter()
                vv = NeuralCleanse(**eq, batched=batched).detect(model, clean, generator=torch.Generator().manual_seed(1))
                times[batched] = time.perf_counter() - t
                trig_sets[batched] = vv.evidence.triggers
                ip = vv.evidence.image_passes
                prec = "bfloat16 autocast" if bf16 else "float32"
                rows.append([f"equal budget ({n_steps} steps x 10 labels), {prec}, "
                             + ("batched" if batched else "one label at a time"), f"{times[batched]:.1f}", n_steps,
                             f"{10 * n_steps / times[batched]:.1f}", ip, f"{ip * fpi / times[batched] / 1e9:.1f}",
                             f"{100 * ip * fpi / times[batched] / 1e9 / peak:.0f}"])
            ratio[bf16] = times[False] / times[True]
            agree[bf16] = all(torch.allclose(p.mask, q.mask, atol=1e-3) for p, q in zip(*trig_sets.values()))
            print(f"equal budget bf16={bf16} batched {times[True]:.1f}s sequential {times[False]:.1f}s", flush=True)
        t = time.perf_counter()
        vbf = NeuralCleanse(epochs=nc.epochs, batch_size=nc.batch_size, patience=nc.patience,
                            early_stop_patience=nc.early_stop_patience, bf16=True).detect(
            model, clean, generator=torch.Generator().manual_seed(0))
        bf_s = time.perf_counter() - t
        bf_l1 = vbf.evidence.l1_norms[vbf.evidence.labels.index(goal.target)]
        rows.insert(0, ["full scan, batched, early stopping (backdoored model), bfloat16 autocast", f"{bf_s:.1f}",
                        f"{min(vbf.evidence.steps)}-{max(vbf.evidence.steps)}", f"{sum(vbf.evidence.steps) / bf_s:.1f}",
                        vbf.evidence.image_passes, f"{vbf.evidence.image_passes * fpi / bf_s / 1e9:.1f}",
                        f"{100 * vbf.evidence.image_passes * fpi / bf_s / 1e9 / peak:.0f}"])
        bf_line = (f"The bfloat16 full scan flags {list(vbf.suspects)} (anomaly index {vbf.score:.2f}, target mask L1 "
                   f"{bf_l1:.2f}) against float32's {list(v.suspects)} ({v.score:.2f}).")
        krows = kernel_rates(model, info.input_shape, fpi, (a.nc_batch_size, 10 * a.nc_batch_size))
        out.append(f"""### Speed (same run; {nc.batch_size} images per label per step, 10 labels)

FLOPs per Neural Cleanse image pass (forward + input gradient, counted with torch's FlopCounterMode):
{fpi / 1e6:.2f} MFLOP. Float32 sgemm peak measured in this run: {peak:.0f} GFLOP/s.

{md_table(["run", "wall s", "steps per label", "label-steps/s", "image passes", "GFLOP/s", "% of sgemm peak"], [
    ["full scan, batched, early stopping (backdoored model), float32", f"{scan_s:.1f}", f"{min(ev.steps)}-{steps}",
     f"{sum(ev.steps) / scan_s:.1f}", ev.image_passes, f"{rate:.1f}", f"{100 * rate / peak:.0f}"]] + rows)}

**Batched speed-up at equal budget: {ratio[False]:.2f}x in float32, {ratio[True]:.2f}x under bfloat16 autocast**
(target ≥ 3x). Both modes run the same optimiser on the same batches; their recovered masks agree within 1e-3:
{agree[False]} / {agree[True]} (the labels' problems are independent, but batched kernels sum in another order and
the optimisation amplifies float rounding). {bf_line}

Why the ratio stays far below 3x on this CPU: one label's step is already {a.nc_batch_size} images of a
{fpi / 1e6:.1f}-MFLOP pass, enough work to keep oneDNN's kernels busy, so stacking the 10 labels into one
{10 * a.nc_batch_size}-image batch buys only the kernel-efficiency gain below (forward + input gradient of the
model alone, same run), not a 10x drop in overhead as on a GPU where small batches are launch-bound:

{md_table(["images per pass", "float32 ms", "float32 GFLOP/s", "bf16 autocast ms", "bf16 GFLOP/s"], krows)}
""")

    # ---- patching by unlearning: the seeds' table ---------------------------------------------
    trig, tgt = ev.trigger_for(v.suspects[0] if v.suspects else ev.smallest), (v.suspects[0] if v.suspects else ev.smallest)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    before = evaluate(model, test, goal)
    res = {"before": before}
    lr0 = a.unlearn_lr[0]
    res["reversed"] = evaluate(NCUnlearn(trigger=trig, target=tgt, lr=lr0).repair(model, clean, generator=g()).model,
                               test, goal)
    res["original"] = evaluate(NCUnlearn(trigger=goal.trigger, target=goal.target, lr=lr0).repair(
        model, clean, generator=g()).model, test, goal)
    res["clean"] = evaluate(NCUnlearn(stamp_fraction=0.0, lr=lr0).repair(model, clean, generator=g()).model, test, goal)
    names = {"before": "before patching", "reversed": "patched w/ reversed trigger",
             "original": "patched w/ original trigger", "clean": "patched w/ clean images only"}
    rows = [[names[k], f"{100 * e.clean_accuracy:.2f}", f"{100 * e.attack_success_rate:.2f}",
             f"{PAPER[k][0]:.2f}", f"{PAPER[k][1]:.2f}"] for k, e in res.items()]
    for lr in a.unlearn_lr[1:]:  # sensitivity of the unlearning learning rate (reported, not tuned on)
        e = evaluate(NCUnlearn(trigger=trig, target=tgt, lr=lr).repair(model, clean, generator=g()).model, test, goal)
        rows.append([f"patched w/ reversed trigger, lr {lr:g}", f"{100 * e.clean_accuracy:.2f}",
                     f"{100 * e.attack_success_rate:.2f}", "-", "-"])
    print(rows, flush=True)
    drop = 100 * (before.clean_accuracy - res["reversed"].clean_accuracy)
    out.append(f"""### Patching by unlearning (seeds' Neural Cleanse table, MNIST row)

Fine-tune 1 epoch (SGD momentum 0.9, lr {lr0:g}, batch 32) on the 6,000-image clean set, 20% of it stamped with the
trigger, true labels kept. Clean-only control: the same fine-tuning with nothing stamped.

{md_table(["", "CA % (ours)", "ASR % (ours)", "CA % (paper)", "ASR % (paper)"], rows)}

Acceptance (reversed trigger): ASR {100 * res["reversed"].attack_success_rate:.2f}% (≤ 1%), CA drop {drop:.2f} pt (≤ 1 pt).
""")

    # ---- input filter -------------------------------------------------------------------------
    filt = NCFilter(trigger=trig)
    half = len(test.x) // 2
    calib, held = test.x[:half], test.x[half:]
    keep = test.y[half:] != goal.target
    stamped = goal.trigger.apply(held[keep])
    frows = []
    for fpr in (0.01, 0.05, 0.10):
        guard = Guard.calibrate(filt, model, calib, fpr=fpr)
        fnr = 1 - float(guard(stamped).flagged.float().mean())
        real_fpr = float(guard(held).flagged.float().mean())
        frows.append([f"{100 * fpr:.0f}%", f"{100 * real_fpr:.2f}", f"{100 * fnr:.2f}"])
    out.append(f"""### Input filter (top 1% penultimate neurons by reversed-trigger activation gap)

Threshold calibrated on 2,500 clean test images (the other 2,500 of the first half are the neuron
ranking pool); evaluated on the other 5,000 clean test images and on them stamped with the TRUE trigger.

{md_table(["target FPR", "measured FPR %", "FNR %"], frows)}
""")

    # ---- pruning ------------------------------------------------------------------------------
    r = NCPrune(trigger=trig, target=tgt).repair(model, clean, generator=g())
    after = evaluate(r.model, test, goal)
    curve = r.summary["curve"]
    pick = [c for c in curve if c["pruned"] % 25 == 0 or c["pruned"] == r.summary["pruned"]][:14]
    out.append(f"""### Neuron pruning (penultimate layer, ranked by reversed-trigger activation gap)

Stops when the reversed trigger's success on the clean set is ≤ 5% or before the clean-set accuracy
drops by more than 5 pt. Pruned {r.summary['pruned']} of {len(r.summary['curve']) and model.head.in_features}
neurons ({100 * r.summary['pruned_fraction']:.1f}%): test CA {100 * after.clean_accuracy:.2f}%, ASR (true trigger)
{100 * after.attack_success_rate:.2f}% (before: {100 * before.clean_accuracy:.2f}% / {100 * before.attack_success_rate:.2f}%).
Curve on the defender's clean set (reversed trigger):

{md_table(["neurons pruned", "clean-set CA %", "reversed-trigger success %"],
          [[c["pruned"], f"{100 * c['clean_accuracy']:.2f}", f"{100 * c['trigger_success']:.2f}"] for c in pick])}
""")
    body = ("## Neural Cleanse on MNIST BadNets (issue 3)\n\n"
            f"Other developers' jobs shared the 2 CPU cores during this run (load average at the end: {load_avg()}), "
            "so wall times are upper bounds; the batched vs one-at-a-time ratio is measured back to back.\n\n"
            + "\n".join(out))
    print(body if a.smoke else write_result("neural_cleanse_mnist", body))


if __name__ == "__main__":
    main()
