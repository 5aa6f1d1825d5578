"""Exercise 4 of seed 000 ("Verifying Backdoor-Freeness"): inputs [-1, 0], [0, 1], [1, -1]; the
trigger overwrites i2 with any value in [-1, 1]; target 0.  The exercise's own network is on a slide
we do not have, so three 2-2-2 ReLU networks (note section 1.7) cover the three cases that matter.
Logits o = W2 relu(W1 i + b1) + b2, h = relu(W1 i + b1); with i = (i1, t):

F1 (no trigger).  W1 = [[-1, 2], [1, -1]], b1 = 0, W2 = [[-1, -2], [2, -1]], b2 = [1, 0].
   o0 - o1 = 1 - 3 h1 - h2.
   A = [-1, t]: h1 = relu(1 + 2t), h2 = relu(-1 - t) = 0 on [-1, 1]
       -> 1 - 3 relu(1 + 2t) > 0  iff  t < -1/3.
   B = [0, t]:  h1 = relu(2t), h2 = relu(-t)
       t >= 0: 1 - 6t > 0 iff t < 1/6;  t < 0: 1 + t > 0 iff t > -1.        -> -1 < t < 1/6.
   C = [1, t]:  h1 = relu(2t - 1), h2 = relu(1 - t)
       t <= 1/2: 1 - (1 - t) = t > 0 iff t > 0;  t > 1/2: 1 - 3(2t - 1) - (1 - t) = 3 - 5t > 0 iff t < 3/5.
       -> 0 < t < 3/5.
   A and C are disjoint even with >=, so no trigger exists: **verified** (the triangle LP is
   infeasible and its Farkas ray checks exactly).

F2 (a trigger interval).  W1 = [[-1, 2], [1, -2]], b1 = 0, W2 = [[-2, -2], [2, -1]], b2 = [1, -1].
   o0 - o1 = 2 - 4 h1 - h2.
   A: h1 = relu(1 + 2t), h2 = relu(-1 - 2t): t >= -1/2: 2 - 4(1 + 2t) > 0 iff t < -1/4;
       t < -1/2: 2 - (-1 - 2t) = 3 + 2t > 0 iff t > -3/2 (always).            -> t < -1/4.
   B: h1 = relu(2t), h2 = relu(-2t): t >= 0: 2 - 8t > 0 iff t < 1/4; t < 0: 2 + 2t > 0 iff t > -1.
       -> -1 < t < 1/4.
   C: h1 = relu(2t - 1), h2 = relu(1 - 2t): t <= 1/2: 2 - (1 - 2t) = 1 + 2t > 0 iff t > -1/2;
       t > 1/2: 2 - 4(2t - 1) > 0 iff t < 3/4.                              -> -1/2 < t < 3/4.
   Common set (-1/2, -1/4): **falsified**, e.g. t = -3/8.

F3 (a tie only).  W1 = [[-1, 2], [1, -1]], b1 = [0, -1], W2 = [[-1, -1], [2, 2]], b2 = [0, -1].
   o0 - o1 = 1 - 3 h1 - 3 h2.
   A: h1 = relu(1 + 2t), h2 = relu(-2 - t) = 0 -> 1 - 3 relu(1 + 2t) >= 0 iff t <= -1/3.
   B: h1 = relu(2t), h2 = relu(-1 - t) = 0    -> t <= 1/6 (and every t < 0).
   C: h1 = relu(2t - 1), h2 = relu(-t): t <= 0: 1 + 3t >= 0 iff t >= -1/3; 0 < t <= 1/2: 1 > 0;
       t > 1/2: 4 - 6t >= 0 iff t <= 2/3.                                   -> -1/3 <= t <= 2/3.
   With >= the only common point is t = -1/3, where A and C *tie* (o0 = o1); with the strict >
   of argmax no trigger exists.  The LP and the MILP are feasible there; the verifier must say
   **boundary**, never verified nor falsified.

In every network no image is class 0 without the trigger (all three predict class 1).
"""
from __future__ import annotations

import torch
from torch import nn

from .region import TriggerRegion

NETWORKS = {
    "F1": ([[-1, 2], [1, -1]], [0, 0], [[-1, -2], [2, -1]], [1, 0]),
    "F2": ([[-1, 2], [1, -2]], [0, 0], [[-2, -2], [2, -1]], [1, -1]),
    "F3": ([[-1, 2], [1, -1]], [0, -1], [[-1, -1], [2, 2]], [0, -1]),
}
EXPECTED = {"F1": "verified", "F2": "falsified", "F3": "boundary"}


def network(name: str) -> nn.Sequential:
    """The 2-2-2 network ``name`` (F1, F2, F3) in float64, taking (N, 1, 1, 2) inputs."""
    w1, b1, w2, b2 = (torch.tensor(v, dtype=torch.float64) for v in NETWORKS[name])
    m = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        m[1].weight.copy_(w1)
        m[1].bias.copy_(b1)
        m[3].weight.copy_(w2)
        m[3].bias.copy_(b2)
    return m.eval()


def images() -> torch.Tensor:
    """X = {[-1, 0], [0, 1], [1, -1]} as (3, 1, 1, 2)."""
    return torch.tensor([[-1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], dtype=torch.float64).reshape(3, 1, 1, 2)


def region() -> TriggerRegion:
    """The trigger overwrites i2 with a value in [-1, 1]."""
    return TriggerRegion(mask=torch.tensor([[[False, True]]]), lo=-1.0, hi=1.0, name="i2")
