"""The joint trigger LP / MILP of the freeness verifier, solved with HiGHS, and the exact Farkas check.

Variables: the shared trigger t (s coordinates, normalised space), then for every image k and
hidden layer i the pre-activations z_i and activations a_i, and the logits z_L.  Rows:

    z_1 - A t          in [c_k - pad, c_k + pad]      (first layer; c_k rounded, so ranged)
    z_i - W_i a_{i-1}  =  b_i                          (exact: W_i, b_i are the float weights)
    a = z  (stable active),  a in [0, 0] (stable inactive: column bounds)
    a - z >= 0,  a - s z <= r     (unstable: triangle; s >= u/(u-l), r >= -s l, rounded up)
    z_L[t] - z_L[j] >= margin     for every j != target
MILP (big-M, exact for l <= z <= u): a - z - l d <= -l,  a - u d <= 0,  d in {0, 1}.

Every column has finite bounds (from ``bounds``), which the exact Farkas check needs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import scipy.sparse as sp

SLOPE_PAD = 1e-12


@dataclass
class Encoded:
    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray  # bool per column
    n_trigger: int


@dataclass
class Solved:
    status: str  # "infeasible" | "feasible" | "timeout" | "error"
    t: np.ndarray | None
    seconds: float
    certified: bool = False  # infeasible and the Farkas ray checked exactly


def encode(weights, biases, c, pad1, A1, t_lo, t_hi, lowers, uppers, target: int, margin: float = 0.0,
           milp: bool = False) -> Encoded:
    """Encode one (position, target) for K images.  ``c``/``pad1``: (K, n_1); ``A1``: (n_1, s);
    ``lowers``/``uppers``: per layer (K, n_i) float64 numpy arrays."""
    K, s, L = c.shape[0], A1.shape[1], len(weights)
    widths = [w.shape[0] for w in weights]
    rows, cols, vals, rlo, rhi = [], [], [], [], []
    clo, chi, integer = [t_lo], [t_hi], [np.zeros(s, bool)]
    nrow, ncol = 0, s

    def add(r, cc, v):
        rows.append(np.asarray(r, np.int64))
        cols.append(np.asarray(cc, np.int64))
        vals.append(np.asarray(v, np.float64))

    def new_cols(lo, hi, is_int=False):
        nonlocal ncol
        idx = np.arange(ncol, ncol + len(lo))
        clo.append(np.asarray(lo, np.float64))
        chi.append(np.asarray(hi, np.float64))
        integer.append(np.full(len(lo), is_int))
        ncol += len(lo)
        return idx

    def new_rows(lo, hi):
        nonlocal nrow
        idx = np.arange(nrow, nrow + len(lo))
        rlo.append(np.asarray(lo, np.float64))
        rhi.append(np.asarray(hi, np.float64))
        nrow += len(lo)
        return idx

    for k in range(K):
        prev_a = None
        for i in range(L):
            n = widths[i]
            lo, hi = lowers[i][k], uppers[i][k]
            z = new_cols(lo, hi)
            if i == 0:
                r = new_rows(c[k] - pad1[k], c[k] + pad1[k])
                add(r, z, np.ones(n))
                rr, tt = np.meshgrid(r, np.arange(s), indexing="ij")
                add(rr.ravel(), tt.ravel(), -A1.ravel())
            else:
                r = new_rows(biases[i], biases[i])
                add(r, z, np.ones(n))
                w = weights[i]
                rr, aa = np.meshgrid(r, prev_a, indexing="ij")
                nz = w != 0
                add(rr[nz], aa[nz], -w[nz])
            if i == L - 1:
                others = np.array([j for j in range(n) if j != target], np.int64)
                r = new_rows(np.full(len(others), margin), np.full(len(others), np.inf))
                add(r, z[np.full(len(others), target)], np.ones(len(others)))
                add(r, z[others], -np.ones(len(others)))
                break
            a = new_cols(np.maximum(lo, 0), np.maximum(hi, 0))
            act, unst = lo >= 0, (lo < 0) & (hi > 0)
            ia, iu = np.flatnonzero(act), np.flatnonzero(unst)
            r = new_rows(np.zeros(len(ia)), np.zeros(len(ia)))
            add(r, a[ia], np.ones(len(ia)))
            add(r, z[ia], -np.ones(len(ia)))
            lu, uu = lo[iu], hi[iu]
            slope = uu / (uu - lu) * (1 + SLOPE_PAD)
            rhs = -slope * lu * (1 + SLOPE_PAD)
            r = new_rows(np.zeros(len(iu)), np.full(len(iu), np.inf))  # a - z >= 0
            add(r, a[iu], np.ones(len(iu)))
            add(r, z[iu], -np.ones(len(iu)))
            r = new_rows(np.full(len(iu), -np.inf), rhs)  # a - s z <= r
            add(r, a[iu], np.ones(len(iu)))
            add(r, z[iu], -slope)
            if milp:
                d = new_cols(np.zeros(len(iu)), np.ones(len(iu)), True)
                r = new_rows(np.full(len(iu), -np.inf), -lu)  # a - z - l d <= -l
                add(r, a[iu], np.ones(len(iu)))
                add(r, z[iu], -np.ones(len(iu)))
                add(r, d, -lu)
                r = new_rows(np.full(len(iu), -np.inf), np.zeros(len(iu)))  # a - u d <= 0
                add(r, a[iu], np.ones(len(iu)))
                add(r, d, -uu)
            prev_a = a
    M = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nrow, ncol))
    return Encoded(M, np.concatenate(rlo), np.concatenate(rhi), np.concatenate(clo), np.concatenate(chi),
                   np.concatenate(integer), s)


def solve(enc: Encoded, *, milp: bool = False, time_limit: float = 60.0) -> Solved:
    """Feasibility solve (zero objective) with HiGHS; for an infeasible LP, check its Farkas ray."""
    import highspy

    t0 = time.perf_counter()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("threads", 1)
    _pass(h, enc, milp)
    h.run()
    st = h.getModelStatus()
    M = highspy.HighsModelStatus
    if not milp and st in (M.kInfeasible, M.kUnboundedOrInfeasible):
        ok = _ray_certifies(h, enc)
        if not ok:  # presolve may answer without a ray: re-solve with the dual simplex, no presolve
            h.clearSolver()
            h.setOptionValue("presolve", "off")
            h.setOptionValue("solver", "simplex")
            h.run()
            ok = h.getModelStatus() in (M.kInfeasible, M.kUnboundedOrInfeasible) and _ray_certifies(h, enc)
        return Solved("infeasible", None, time.perf_counter() - t0, certified=ok)
    if st in (M.kInfeasible, M.kUnboundedOrInfeasible):
        return Solved("infeasible", None, time.perf_counter() - t0)
    if st == M.kOptimal or (milp and h.getInfo().primal_solution_status == 2):
        x = np.asarray(h.getSolution().col_value, np.float64)
        return Solved("feasible", x[:enc.n_trigger].copy(), time.perf_counter() - t0)
    if st in (M.kTimeLimit, M.kIterationLimit, M.kInterrupt):
        return Solved("timeout", None, time.perf_counter() - t0)
    return Solved("error", None, time.perf_counter() - t0)


def _pass(h, enc: Encoded, milp: bool) -> None:
    import highspy

    A = enc.A.tocsc()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = A.shape[1], A.shape[0]
    lp.col_cost_ = np.zeros(A.shape[1])
    lp.col_lower_, lp.col_upper_ = enc.col_lo, enc.col_hi
    lp.row_lower_, lp.row_upper_ = enc.row_lo, enc.row_hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data.astype(np.float64)
    if milp and enc.integer.any():
        lp.integrality_ = [highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous
                           for b in enc.integer]
    h.passModel(lp)


def _ray_certifies(h, enc: Encoded) -> bool:
    try:
        _, has, ray = h.getDualRay()
    except Exception:  # noqa: BLE001 - an old highspy without rays: no certificate
        return False
    if not has:
        return False
    y = np.asarray(ray, np.float64)
    if y.shape[0] != enc.A.shape[0] or not np.isfinite(y).all():
        return False
    scale = np.abs(y).max(initial=0.0)
    if scale == 0:
        return False
    for cand in (y, -y, np.where(np.abs(y) > 1e-11 * scale, y, 0.0), np.where(np.abs(y) > 1e-11 * scale, -y, 0.0)):
        if farkas_check(enc, cand):
            return True
    return False


def farkas_check(enc: Encoded, y: np.ndarray) -> bool:
    """Exact proof of infeasibility of {row_lo <= A x <= row_hi, col_lo <= x <= col_hi}: with
    c = A^T y (in rationals), every feasible x has y^T A x >= lower(y) and c^T x <= upper(y);
    lower(y) > upper(y) is a contradiction.  Entries of y that would need an infinite row bound are
    dropped first (that keeps a valid multiplier)."""
    y = np.where((y > 0) & ~np.isfinite(enc.row_lo), 0.0, y)
    y = np.where((y < 0) & ~np.isfinite(enc.row_hi), 0.0, y)
    rows = np.flatnonzero(y)
    if rows.size == 0:
        return False
    F = Fraction
    lower = F(0)
    for i in rows:
        yi = F(float(y[i]))
        lower += yi * F(float(enc.row_lo[i] if y[i] > 0 else enc.row_hi[i]))
    sub = enc.A[rows]
    coo = sub.tocoo()
    c: dict[int, Fraction] = {}
    yr = [F(float(v)) for v in y[rows]]
    for r, j, v in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist()):
        c[j] = c.get(j, F(0)) + yr[r] * F(v)
    upper = F(0)
    for j, cj in c.items():
        if cj > 0:
            b = float(enc.col_hi[j])
        elif cj < 0:
            b = float(enc.col_lo[j])
        else:
            continue
        if not np.isfinite(b):
            return False
        upper += cj * F(b)
    return lower > upper
