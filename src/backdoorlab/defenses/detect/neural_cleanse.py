"""Neural Cleanse (Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao, "Neural Cleanse: Identifying and
Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019; seeds 000, 001, 002, 003).

Threat model: the defender holds the (possibly trojaned) model and a small clean set, and asks
whether some label y_t can be reached from every input by a trigger much smaller than for the
other labels.

Equations (numbered as in the paper):
  (2) x' = A(x, m, Δ) = (1 - m) * x + m * Δ,  m in [0,1]^(H,W) shared by the channels, Δ in [0,1]^(C,H,W)
  (3) min_{m,Δ}  CE(y_t, f(A(x, m, Δ))) + λ * |m|_1   over x in the clean set, for every label y_t
  MAD outlier test: anomaly index a_t = |n_t - median(n)| / (1.4826 * median(|n - median(n)|))
      over the masks' L1 norms n_t; label t is flagged when a_t > 2 and n_t < median(n).

λ schedule (official code, ``visualizer.py``): λ starts at 0; after ``patience`` epochs with
attack success >= threshold it is set to ``init_cost``; then it is multiplied by
``cost_multiplier`` after ``patience`` epochs above the threshold and divided by
``cost_multiplier ** 1.5`` after ``patience`` epochs below it.  The best mask is the smallest one
whose epoch-average attack success is >= threshold.  A label stops early once λ has gone both
up and down and the best L1 norm has not improved by 1% for ``early_stop_patience`` epochs.

Deviations:
  * All candidate labels are optimised in ONE batched problem: each step stamps the same clean
    batch with every active label's (m, Δ) and runs one forward/backward over labels x images.
    The labels' losses are summed; their gradients and Adam moments are independent, so the
    result per label is the same as optimising it alone (``batched=False`` does exactly that,
    with the same data order, for an honest speed comparison).  Labels that stop early are
    frozen and leave the batch.
  * Adam is written out (per-label state, PyTorch's update form, betas (0.5, 0.9) as official);
    the schedule is vectorised over labels and read back once per epoch, never per step.
  * ``bf16=True`` (off by default) runs the network under bfloat16 autocast; the official code is
    float32 throughout.
  * Random restarts (``restarts``, default 2; the official code runs one start): every label is
    optimised from ``restarts`` random (m, Δ) starts, all of them rows of the same batched forward,
    and the smallest mask that reached the success threshold is kept (start 0 when none did).  Eq. (3)
    is not convex and the official schedule only ever follows one start: a start can settle in a
    large "natural" trigger for the target class (e.g. the strokes of a 7) that neither λ nor a longer
    budget moves it out of, hiding a small planted trigger that other starts find.  Start 0 uses the
    official draw order (same generator draws as with one start), further starts are drawn after it,
    so ``restarts=1`` is the single-start optimiser.  The cost per step grows with the starts.
  * (Removed deviation.)  The median was ``torch.median`` (the lower middle value for an even
    number of labels); it is now numpy's mean of the two middle values, as the official code
    computes it (``_stats.median``).  On the MNIST population with two starts the lower median
    had dropped pixel-br-t0's index to 1.93 (3.29 with the official median); we switched after
    seeing that, to match the reference code — both verdicts are in the detection benchmark.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..._stats import MAD_CONSISTENCY, anomaly_index, median
from ..._torch import device_of, eval_mode, frozen, new_generator, generator_seed
from ..._validation import check_images, in_range, positive
from ...data import as_tensors
from ...roles import Detector, Progress
from ...triggers import PatchTrigger
from ...types import Verdict

_EPS = 1e-7  # tanh-space margin, as Keras' epsilon in the official code
_BETAS = (0.5, 0.9)


@dataclass(frozen=True, eq=False)
class NeuralCleanseEvidence:
    """Per candidate label (aligned with ``labels``): the reversed trigger and its statistics."""

    labels: tuple[int, ...]
    l1_norms: tuple[float, ...]          # |m_t|_1 of the best mask per label
    anomaly_indices: tuple[float, ...]   # a_t (MAD)
    triggers: tuple[PatchTrigger, ...]   # recovered (m_t, Δ_t)
    success_rates: tuple[float, ...]     # each trigger's success on clean inputs of other classes
    steps: tuple[int, ...]               # optimisation steps spent per label
    flagged: tuple[int, ...]             # labels with a_t > threshold and n_t < median
    median: float
    mad: float
    image_passes: int                    # label x image forward/backward passes in total
    start_l1_norms: tuple = ()           # per label: each random start's best L1 (None: never succeeded)

    def trigger_for(self, label: int) -> PatchTrigger:
        return self.triggers[self.labels.index(int(label))]

    @property
    def smallest(self) -> int:
        """The label with the smallest reversed trigger (the best repair candidate)."""
        return self.labels[min(range(len(self.labels)), key=lambda i: self.l1_norms[i])]

    def table(self) -> tuple[list[str], list[list]]:
        rows = [[t, round(n, 2), round(a, 2), f"{100 * s:.1f}%", "yes" if t in self.flagged else ""]
                for t, n, a, s in zip(self.labels, self.l1_norms, self.anomaly_indices, self.success_rates)]
        return ["label", "L1 norm", "anomaly index", "trigger success", "flagged"], rows

    def to_json(self) -> dict:
        return {"labels": list(self.labels), "l1_norms": list(self.l1_norms),
                "anomaly_index": list(self.anomaly_indices), "success_rates": list(self.success_rates),
                "steps": list(self.steps), "flagged": list(self.flagged), "median": self.median,
                "mad": self.mad, "image_passes": self.image_passes,
                "start_l1_norms": [list(v) for v in self.start_l1_norms]}


@dataclass(frozen=True, kw_only=True)
class NeuralCleanse(Detector):
    """Neural Cleanse trigger reverse-engineering + MAD outlier detection.

    labels: candidate target labels y_t (default: all).       init_cost: λ once set (INIT_COST).
    cost_multiplier: λ up-factor; down-factor is its ^1.5.    patience: epochs before λ changes.
    success_threshold: attack success that counts as reached (ATTACK_SUCC_THRESHOLD).
    lr: Adam step size.  batch_size: clean images per label per step.
    batches_per_epoch: steps per schedule epoch (MINI_BATCH).  epochs: max epochs per label (STEPS).
    early_stop / early_stop_threshold / early_stop_patience: per-label early stopping.
    anomaly_threshold: MAD index above which a small trigger is an outlier (2).
    restarts: random starts per label (all in the same batched forward); the smallest successful mask wins.
    batched: optimise all labels in one batch (True) or one label at a time (False).
    eval_images: clean images used to report each trigger's success rate.
    bf16: run the model's forward/backward under CPU/CUDA bfloat16 autocast (mask, pattern, Adam
        state and the loss stay float32).  The full MNIST scan runs 2.7x faster on this AMX Xeon; off by
        default so that results do not depend on the machine's instruction set.
    """

    labels: tuple[int, ...] | None = None
    init_cost: float = 1e-3
    cost_multiplier: float = 2.0
    patience: int = 5
    success_threshold: float = 0.99
    lr: float = 0.1
    batch_size: int = 32
    batches_per_epoch: int = 10
    epochs: int = 100
    early_stop: bool = True
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 10
    restarts: int = 2
    anomaly_threshold: float = 2.0
    batched: bool = True
    eval_images: int = 2000
    bf16: bool = False

    def __post_init__(self) -> None:
        n = "NeuralCleanse"
        positive(n, "init_cost", self.init_cost)
        in_range(n, "cost_multiplier", self.cost_multiplier, 1.0, 1e3, lo_open=True)
        for f in ("patience", "batch_size", "batches_per_epoch", "epochs", "early_stop_patience", "restarts",
                  "eval_images"):
            positive(n, f, getattr(self, f), integer=True)
        in_range(n, "success_threshold", self.success_threshold, 0.0, 1.0, lo_open=True)
        in_range(n, "early_stop_threshold", self.early_stop_threshold, 0.0, 1.0, lo_open=True)
        positive(n, "lr", self.lr)
        positive(n, "anomaly_threshold", self.anomaly_threshold, allow_zero=True)
        if self.labels is not None:
            if (not isinstance(self.labels, (tuple, list)) or len(self.labels) < 1
                    or not all(isinstance(t, int) and t >= 0 for t in self.labels)):
                raise ValueError(f"NeuralCleanse.labels must be a non-empty tuple of label ids; got {self.labels!r}.")
            object.__setattr__(self, "labels", tuple(self.labels))

    # ---- the verb ----------------------------------------------------------------------------
    def detect(self, model: torch.nn.Module, clean, *, generator: torch.Generator | None = None,
               progress: Progress = None) -> Verdict:
        x, y = _clean_images(clean)
        K = _num_classes(model, x)
        labels = self.labels if self.labels is not None else tuple(range(K))
        if max(labels) >= K:
            raise ValueError(f"NeuralCleanse.labels must be < the number of classes ({K}); got {labels!r}.")
        # channels-last (NHWC) weights let oneDNN pick its fast convolution kernels (about 1.4x on a
        # Xeon for the MNIST CNN); the copy keeps the caller's model untouched.
        net = copy.deepcopy(model).to(memory_format=torch.channels_last)
        with eval_mode(net), frozen(net):
            masks, patterns, steps, starts = self.reverse_engineer(net, x, labels, generator=generator,
                                                                   progress=progress)
            triggers = tuple(PatchTrigger(mask=m.clamp(0, 1), pattern=p.clamp(0, 1)) for m, p in zip(masks, patterns))
            success = _success_rates(net, x[: self.eval_images], y[: self.eval_images], triggers, labels)
        return self._outliers(labels, masks, triggers, success, steps, starts)

    def _outliers(self, labels, masks, triggers, success, steps, starts=()) -> Verdict:
        """MAD test over the masks' L1 norms (step 2 of the paper's detection)."""
        norms = torch.stack([m.sum() for m in masks]).double()
        idx = anomaly_index(norms) if len(labels) > 1 else torch.zeros(1, dtype=torch.float64)
        med = median(norms)
        mad = float(median((norms - med).abs()) * MAD_CONSISTENCY)
        below = norms < med
        flagged = [i for i in range(len(labels)) if below[i] and idx[i] > self.anomaly_threshold]
        flagged.sort(key=lambda i: float(norms[i]))
        score = float(idx[below].max()) if bool(below.any()) else 0.0
        ev = NeuralCleanseEvidence(
            labels=tuple(labels), l1_norms=tuple(float(v) for v in norms),
            anomaly_indices=tuple(float(v) for v in idx), triggers=triggers,
            success_rates=tuple(success), steps=tuple(steps), flagged=tuple(labels[i] for i in flagged),
            median=float(med), mad=mad, image_passes=int(sum(steps)) * self.batch_size, start_l1_norms=tuple(starts))
        return Verdict(backdoored=bool(flagged), score=score, threshold=float(self.anomaly_threshold),
                       suspects=ev.flagged, evidence=ev)

    # ---- step 1: reverse-engineer a minimal trigger per label (eq. 3) -------------------------
    def reverse_engineer(self, model: torch.nn.Module, x: torch.Tensor, labels, *,
                         generator: torch.Generator | None = None, progress: Progress = None):
        """(masks (1,H,W), patterns (C,H,W), steps, starts) per label; ``model`` is used as is (eval,
        frozen).  ``steps`` counts every start's optimisation steps; ``starts`` holds each start's
        best mask L1 (None for a start that never reached the success threshold)."""
        C, H, W = x.shape[1:]
        L, R = len(labels), self.restarts
        # random initial mask and pattern, as the official example; start 0 is drawn exactly as with
        # a single start (before the data seed), further starts after it
        m0 = [torch.rand(L, 1, H, W, generator=generator).clamp(0.01, 0.99)]
        p0 = [torch.rand(L, C, H, W, generator=generator).clamp(0.01, 0.99)]
        data_seed = generator_seed(generator)
        for _ in range(R - 1):
            m0.append(torch.rand(L, 1, H, W, generator=generator).clamp(0.01, 0.99))
            p0.append(torch.rand(L, C, H, W, generator=generator).clamp(0.01, 0.99))
        m0, p0 = torch.cat(m0), torch.cat(p0)          # row r * L + i: start r of label i
        if self.batched:
            rows = self._optimise(model, x, list(labels) * R, m0, p0, data_seed, progress, 0, self.epochs)
        else:
            rows = [[None] * (R * L) for _ in range(4)]
            for i, t in enumerate(labels):  # the same optimiser, one label (with its starts) at a time
                pick = list(range(i, R * L, L))
                out = self._optimise(model, x, [t] * R, m0[pick], p0[pick], data_seed, progress,
                                     i * self.epochs, L * self.epochs)
                for col, vals in zip(rows, out):
                    for j, v in zip(pick, vals):
                        col[j] = v
        return self._best_start(L, R, *rows)

    def _best_start(self, L, R, masks, patterns, steps, found):
        """Per label: the smallest mask among the starts that reached the threshold (else start 0)."""
        out_m, out_p, out_s, starts = [], [], [], []
        for i in range(L):
            js = range(i, R * L, L)
            l1 = [float(masks[j].sum()) if found[j] else None for j in js]
            ok = [j for j in js if found[j]]
            best = min(ok, key=lambda j: float(masks[j].sum())) if ok else i
            out_m.append(masks[best])
            out_p.append(patterns[best])
            out_s.append(sum(steps[j] for j in js))
            starts.append(tuple(l1))
        return out_m, out_p, out_s, starts

    def _optimise(self, model, x, labels, m0, p0, data_seed, progress, offset, span):
        dev = device_of(model)
        x = x.to(dev)
        L, B, nb = len(labels), self.batch_size, self.batches_per_epoch
        stream = _BatchStream(len(x), new_generator(data_seed))
        # optimisation variables in tanh space and their Adam moments, one row per active label
        s = {"wm": _atanh01(m0).to(dev), "wp": _atanh01(p0).to(dev)}
        s.update({k + n: torch.zeros_like(s[k]) for k in ("wm", "wp") for n in ("1", "2")})
        z = torch.zeros(L, device=dev)
        s.update(tgt=torch.tensor(labels, device=dev), row=torch.arange(L, device=dev), cost=z.clone(),
                 set_cnt=z.clone(), up_cnt=z.clone(), down_cnt=z.clone(), up=z.bool(), down=z.bool(),
                 es_cnt=z.clone(), reg_best=z + float("inf"), es_best=z + float("inf"),
                 m_best=_from_tanh(s["wm"]).detach().clone(), p_best=_from_tanh(s["wp"]).detach().clone())
        res_m, res_p, res_steps, res_found = [None] * L, [None] * L, [0] * L, [False] * L
        t = 0
        for epoch in range(self.epochs):
            acc_sum = torch.zeros(len(s["row"]), device=dev)
            reg_sum = torch.zeros_like(acc_sum)
            for idx in stream.take(nb, B):
                t += 1
                acc, reg = self._step(model, x[idx.to(dev)], s, t)
                acc_sum += acc
                reg_sum += reg
            stop = self._schedule(s, acc_sum / nb, reg_sum / nb)
            last = epoch == self.epochs - 1
            if last or bool(stop.any()):  # one host sync per epoch, never per step
                leave = torch.ones_like(stop) if last else stop
                found = torch.isfinite(s["reg_best"])  # no success at all: keep the last mask (official)
                for j in torch.nonzero(leave).flatten().tolist():
                    r = int(s["row"][j])
                    use = s["m_best"][j] if found[j] else _from_tanh(s["wm"][j])
                    res_m[r] = use.cpu()
                    res_p[r] = (s["p_best"][j] if found[j] else _from_tanh(s["wp"][j])).cpu()
                    res_steps[r] = t
                    res_found[r] = bool(found[j])
                keep = ~leave
                s = {k: v[keep] for k, v in s.items()}  # freeze converged labels: they leave the batch
            if progress is not None:
                progress(offset + (epoch + 1 if len(s["row"]) else self.epochs), span)
            if len(s["row"]) == 0:
                break
        return res_m, res_p, res_steps, res_found

    def _step(self, model, xb, s, t):
        """One Adam step on eq. (3) for every active label at once: (A labels) x (B images)."""
        wm, wp = s["wm"].requires_grad_(True), s["wp"].requires_grad_(True)
        with torch.enable_grad():
            m, p = _from_tanh(wm), _from_tanh(wp)                                  # (A,1,H,W), (A,C,H,W)
            xs = (1 - m).unsqueeze(1) * xb.unsqueeze(0) + (m * p).unsqueeze(1)     # eq. (2), (A,B,C,H,W)
            A, B = xs.shape[:2]
            flat = xs.flatten(0, 1)
            if flat.dim() == 4:
                flat = flat.contiguous(memory_format=torch.channels_last)
            with torch.autocast(flat.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = model(flat).view(A, B, -1).float()
            tgt = s["tgt"].repeat_interleave(B)
            ce = F.cross_entropy(logits.flatten(0, 1), tgt, reduction="none").view(A, B).mean(1)
            reg = m.flatten(1).sum(1)                                              # |m|_1
            loss = (ce + s["cost"] * reg).sum()                                    # eq. (3), summed over labels
            gm, gp = torch.autograd.grad(loss, (wm, wp))
        with torch.no_grad():
            b1, b2 = _BETAS
            for k, g in (("wm", gm), ("wp", gp)):
                s[k + "1"].mul_(b1).add_(g, alpha=1 - b1)
                s[k + "2"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (s[k + "2"] / (1 - b2 ** t)).sqrt_().add_(_EPS)
                s[k] = (s[k].detach() - self.lr / (1 - b1 ** t) * s[k + "1"] / denom)
            acc = (logits.detach().argmax(-1) == s["tgt"].unsqueeze(1)).float().mean(1)
        return acc, reg.detach()

    def _schedule(self, s, acc, reg) -> torch.Tensor:
        """End of epoch, vectorised over labels: keep the best mask, early stop, adjust λ."""
        P, up_f, down_f = self.patience, self.cost_multiplier, self.cost_multiplier ** 1.5
        ok = acc >= self.success_threshold
        better = ok & (reg < s["reg_best"])
        m_now, p_now = _from_tanh(s["wm"]).detach(), _from_tanh(s["wp"]).detach()
        s["m_best"] = torch.where(better.view(-1, 1, 1, 1), m_now, s["m_best"])
        s["p_best"] = torch.where(better.view(-1, 1, 1, 1), p_now, s["p_best"])
        s["reg_best"] = torch.where(better, reg, s["reg_best"])
        found = torch.isfinite(s["reg_best"])
        stale = s["reg_best"] >= self.early_stop_threshold * s["es_best"]
        s["es_cnt"] = torch.where(found, torch.where(stale, s["es_cnt"] + 1, 0), s["es_cnt"])
        s["es_best"] = torch.minimum(s["reg_best"], s["es_best"])
        stop = s["up"] & s["down"] & (s["es_cnt"] >= self.early_stop_patience)
        if not self.early_stop:
            stop = torch.zeros_like(stop)
        zero = s["cost"] == 0
        s["set_cnt"] = torch.where(zero & ok, s["set_cnt"] + 1, 0)
        init = s["set_cnt"] >= P
        s["cost"] = torch.where(init, self.init_cost, s["cost"])
        for k in ("up_cnt", "down_cnt"):
            s[k] = torch.where(init, 0, s[k])
        for k in ("up", "down"):
            s[k] = s[k] & ~init
        s["up_cnt"] = torch.where(ok, s["up_cnt"] + 1, 0)
        s["down_cnt"] = torch.where(ok, 0, s["down_cnt"] + 1)
        go_up = s["up_cnt"] >= P
        go_down = ~go_up & (s["down_cnt"] >= P)
        s["cost"] = torch.where(go_up, s["cost"] * up_f, torch.where(go_down, s["cost"] / down_f, s["cost"]))
        s["up_cnt"] = torch.where(go_up, 0, s["up_cnt"])
        s["down_cnt"] = torch.where(go_down, 0, s["down_cnt"])
        s["up"] = s["up"] | go_up
        s["down"] = s["down"] | go_down
        return stop


# ---- helpers -------------------------------------------------------------------------------------
class _BatchStream:
    """Shuffled passes over ``n`` indices drawn from a generator; same seed -> same batches."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.g, self.buf = n, generator, torch.empty(0, dtype=torch.long)

    def take(self, count: int, size: int) -> list[torch.Tensor]:
        need = count * size
        while len(self.buf) < need:
            self.buf = torch.cat([self.buf, torch.randperm(self.n, generator=self.g)])
        out, self.buf = self.buf[:need], self.buf[need:]
        return list(out.view(count, size))


def _from_tanh(w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(w) / (2 - _EPS) + 0.5


def _atanh01(v: torch.Tensor) -> torch.Tensor:
    return torch.atanh((v - 0.5) * (2 - _EPS))


def _clean_images(clean) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(clean, torch.Tensor):
        x = clean
        y = torch.full((len(x),), -1, dtype=torch.long)
    else:
        x, y = as_tensors(clean)
    check_images(x, "NeuralCleanse clean images")
    if len(x) < 2:
        raise ValueError(f"NeuralCleanse needs at least 2 clean images; got {len(x)}.")
    return x.float(), y.long()


def _num_classes(model: torch.nn.Module, x: torch.Tensor) -> int:
    k = getattr(model, "num_classes", None)
    if isinstance(k, int):
        return k
    with torch.no_grad(), eval_mode(model):
        return int(model(x[:1].to(device_of(model))).shape[1])


@torch.no_grad()
def _success_rates(model, x, y, triggers, labels, chunk: int = 4096) -> list[float]:
    """Fraction of clean inputs (of classes other than t) that the reversed trigger sends to t."""
    dev = device_of(model)
    out = []
    for trig, t in zip(triggers, labels):
        keep = y != t
        xs = trig.apply(x[keep].to(dev))
        if len(xs) == 0:
            out.append(float("nan"))
            continue
        hits = sum(int((model(xs[i:i + chunk]).argmax(1) == t).sum()) for i in range(0, len(xs), chunk))
        out.append(hits / len(xs))
    return out


def reversed_trigger(detector: NeuralCleanse, model: torch.nn.Module, clean, *,
                     trigger: PatchTrigger | None = None, target: int | None = None,
                     generator: torch.Generator | None = None, progress: Progress = None) -> dict:
    """The trigger a Neural Cleanse mitigation works with: the given one, else the reversed one of
    the most anomalous flagged label, else (model not flagged) of the label with the smallest mask.

    Returns ``{"trigger", "target", "flagged", "l1_norm", "anomaly_index", "verdict"}``."""
    if trigger is not None:
        if target is None:
            raise ValueError("a Neural Cleanse mitigation given a trigger needs its target label too; got target=None.")
        return {"trigger": trigger, "target": int(target), "flagged": True, "l1_norm": trigger.l1(),
                "anomaly_index": None, "verdict": None}
    verdict = detector.detect(model, clean, generator=generator, progress=progress)
    ev: NeuralCleanseEvidence = verdict.evidence
    t = verdict.suspects[0] if verdict.suspects else ev.smallest
    i = ev.labels.index(t)
    return {"trigger": ev.triggers[i], "target": int(t), "flagged": verdict.backdoored,
            "l1_norm": ev.l1_norms[i], "anomaly_index": ev.anomaly_indices[i], "verdict": verdict}
