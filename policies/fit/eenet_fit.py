"""Fit EENet's scheduler on cached validation logits (algorithms.md §B.3-B.5).

Per exit k: a scoring head q_k = a_k . p_k + b_k . [m_k, e_k, q_<k] (trained towards 1[exit k is
right]) and an assignment MLP r_k (soft exit shares g = softmax_k(r)). Loss, in alternating phases
of `period` epochs (block-coordinate: each phase steps only its own parameters):

    q-phase:  (1/K) sum_k sum_n w_nk BCE(clamp(q_nk), correct_nk),  w_nk = g_nk / sum_n g_nk
    r-phase:  alpha_kl KL(t || g) + alpha_cost |mean_n sum_k g_nk c_k - B| / B,  t ∝ q^beta

Then thresholds come from the budgeted-quantile procedure (§B.5) with the learned shares, and a
final global offset is bisected on validation so that the realised (hard) validation cost equals
the budget (our addition: the learned shares alone are only within ~10 %).

Deviations from the paper, all deliberate: Adam lr 1e-2 and 200 full-batch epochs (not 3e-5 and
1000 epochs; seconds on a CPU for N≈1000, K=6); 3 restarts (not 10); the assignment MLP ends in a
linear unit, not a sigmoid, because softmax over sigmoid outputs caps every share within a factor
e of the others (for K=6 no budget below ~49 % is reachable); q-head init q_k = m_k. Bugs of the
released code avoided (§B.12): zero_grad every step, deep-copied best model, per-sample (B,) score
shapes, a forced exit at K.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from policies.base import PolicyError, check_int, check_number, probabilities
from policies.costs import ExitCosts
from policies.eenet import EENetPolicy, eenet_features


@dataclass(frozen=True)
class EENetFitConfig:
    budget: float = 0.5  # average cost as a fraction of the last exit's cost
    epochs: int = 200
    period: int = 10
    lr: float = 1e-2
    weight_decay: float = 1e-4
    alpha_cost: float = 1e-2
    alpha_kl: float = 1e-3
    beta: float = 1.0
    hidden_rate: float = 2.0
    restarts: int = 3
    budget_tolerance: float = 0.1  # model selection: |E[cost] - B| / B below this
    seed: int = 0

    def validate(self, costs: ExitCosts) -> None:
        first = costs.fractions()[0]
        b = check_number("eenet: budget", self.budget, -math.inf, math.inf)
        if b < first - 1e-12:
            raise PolicyError(f"eenet: budget={self.budget!r} is below the first exit's cost "
                              f"{first:.4f} (fraction of full cost, {costs.unit})")
        if b > 1.0:
            raise PolicyError(f"eenet: budget={self.budget!r} is above the full cost 1.0 "
                              "(fraction of full cost)")
        check_int("eenet: epochs", self.epochs, 1, 100_000)
        check_int("eenet: period", self.period, 1, 100_000)
        check_int("eenet: restarts", self.restarts, 1, 1000)
        check_number("eenet: lr", self.lr, 1e-8, 10.0)


@dataclass(frozen=True)
class EENetFit:
    """A fitted scheduler: the online policy plus how it did on validation."""

    policy: EENetPolicy
    val_cost: float  # realised mean cost on validation (fraction of full cost)
    val_expected_cost: float  # the soft assignment's expected cost before the offset
    val_accuracy: float
    offset: float  # global threshold shift found by the final bisection
    shares: list[float]  # learned exit shares (mean of g)

    def params(self) -> dict[str, Any]:
        return self.policy.params()


class _Scheduler(nn.Module):
    def __init__(self, num_exits: int, num_classes: int, hidden_rate: float):
        super().__init__()
        self.a = nn.ParameterList([nn.Parameter(torch.zeros(num_classes, dtype=torch.float64))
                                   for _ in range(num_exits)])
        self.b = nn.ParameterList()
        self.r = nn.ModuleList()
        for k in range(1, num_exits + 1):
            init = torch.zeros(k + 1, dtype=torch.float64)
            init[0] = 1.0  # q_k = m_k to start with
            self.b.append(nn.Parameter(init))
            d_in = num_classes + k + 1
            hidden = max(2, int(d_in * hidden_rate))
            self.r.append(nn.Sequential(nn.Linear(d_in, hidden), nn.Sigmoid(),
                                        nn.Linear(hidden, 1)).double())

    def forward(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K, C) probabilities -> raw scores q (N, K) and assignment logits r (N, K)."""
        qs: list[torch.Tensor] = []
        rs: list[torch.Tensor] = []
        for k in range(probs.shape[1]):
            p = probs[:, k]  # (N, C)
            earlier = torch.stack(qs, 1) if qs else p.new_zeros(p.shape[0], 0)  # (N, k)
            feats = eenet_features(p, earlier)  # (N, k+2)
            qs.append((p * self.a[k]).sum(-1) + (feats * self.b[k]).sum(-1))  # (N,)
            r_in = torch.cat([p, feats.detach()], dim=1)  # (N, C+k+2)
            rs.append(self.r[k](r_in).squeeze(1))  # (N,)
        return torch.stack(qs, 1), torch.stack(rs, 1)

    def q_params(self) -> list[nn.Parameter]:
        return list(self.a) + list(self.b)


def quantile_thresholds(q: torch.Tensor, shares: torch.Tensor) -> list[float | None]:
    """§B.5: exit k takes the floor(share_k N) highest-q rows not yet assigned; T_K fires all."""
    n, k_max = q.shape
    free = torch.ones(n, dtype=torch.bool)
    out: list[float | None] = []
    for k in range(k_max - 1):
        take = min(int(math.floor(float(shares[k]) * n)), int(free.sum()))
        if take == 0:
            out.append(None)
            continue
        cand = q[free, k]  # (n_free,)
        t = float(torch.topk(cand, take).values[-1])
        out.append(t)
        free &= ~(q[:, k] >= t)
    out.append(None)
    return out


def hard_exits(q: torch.Tensor, thresholds: list[float | None], offset: float) -> torch.Tensor:
    """1-based exit per row for thresholds + offset on exits 1..K-1 (K always fires)."""
    n, k_max = q.shape
    t = torch.tensor([math.inf if x is None else x + offset for x in thresholds[:-1]],
                     dtype=q.dtype)  # (K-1,)
    fires = torch.cat([q[:, :-1] >= t, torch.ones(n, 1, dtype=torch.bool)], dim=1)  # (N, K)
    return fires.double().argmax(dim=1) + 1  # (N,)


def fit_offset(q: torch.Tensor, thresholds: list[float | None], cost: torch.Tensor,
               budget: float) -> float:
    """Global shift of thresholds 1..K-1 whose realised mean cost is closest to `budget`.

    A row fires at exit k iff gap_k = q_k - T_k >= offset, so the realised cost is a step function
    of the offset, non-decreasing, constant on (g_{j-1}, g_j] between sorted distinct gaps g. The
    reachable costs are cost(g_j) and the all-to-the-last-exit cost above every gap; bisection finds
    the steps around the budget and the offset is put strictly inside the chosen interval (no
    ties with a gap, so the online comparison q >= T + offset decides the same way).
    """
    t = torch.tensor([math.inf if x is None else x for x in thresholds[:-1]], dtype=q.dtype)
    gaps = q[:, :-1] - t  # (N, K-1)
    cand = torch.unique(gaps[torch.isfinite(gaps)])  # (G,) ascending
    if len(cand) == 0:
        return 0.0

    def realised(j: int) -> float:  # cost for an offset in (cand[j-1], cand[j]]; j == G: none
        off = float(cand[j]) if j < len(cand) else math.inf
        return float(cost[hard_exits(q, thresholds, off) - 1].mean())

    lo, hi = 0, len(cand)  # first step whose cost reaches the budget (G when none does)
    while lo < hi:
        mid = (lo + hi) // 2
        if realised(mid) >= budget:
            hi = mid
        else:
            lo = mid + 1
    best = lo if lo == 0 or abs(realised(lo) - budget) <= abs(realised(lo - 1) - budget) \
        else lo - 1
    return _inside_step(cand, best)


def _inside_step(cand: torch.Tensor, j: int) -> float:
    """An offset strictly inside (cand[j-1], cand[j]] (below every gap for j == 0, above all for
    j == len(cand)), away from both ends."""
    if j == 0:
        return float(cand[0]) - 1.0
    if j == len(cand):
        return float(cand[-1]) + 1.0
    return (float(cand[j - 1]) + float(cand[j])) / 2


@dataclass(frozen=True)
class _Snapshot:
    deviation: float  # |E[cost] - B| / B under the soft assignment
    state: dict[str, Any]  # deep copy of the scheduler's state dict


def _train_once(probs: torch.Tensor, correct: torch.Tensor, cost: torch.Tensor,
                cfg: EENetFitConfig, seed: int) -> list[_Snapshot]:
    """One restart; a snapshot at the end of each r-phase."""
    torch.manual_seed(seed)
    n, k_max, c = probs.shape
    model = _Scheduler(k_max, c, cfg.hidden_rate)
    opt_q = torch.optim.Adam(model.q_params(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_r = torch.optim.Adam(model.r.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    snapshots: list[_Snapshot] = []
    eps = 1e-6
    for epoch in range(cfg.epochs):
        q, r = model(probs)  # (N, K), (N, K)
        g = torch.softmax(r, dim=1)  # (N, K)
        if (epoch // cfg.period) % 2 == 0:  # q-phase
            w = (g / g.sum(0, keepdim=True)).detach()  # (N, K)
            bce = F.binary_cross_entropy(q.clamp(eps, 1 - eps), correct, reduction="none")
            loss = (w * bce).sum(0).mean()
            opt_q.zero_grad()
            loss.backward()
            opt_q.step()
        else:  # r-phase
            tq = q.detach().clamp_min(eps) ** cfg.beta  # (N, K)
            target = tq / tq.sum(1, keepdim=True)
            # KL(t || g) with the element-mean reduction of the released code's KLDivLoss
            kl = (target * (target.clamp_min(1e-300).log() - torch.log_softmax(r, dim=1))).mean()
            expected = (g * cost).sum(1).mean()
            loss = cfg.alpha_kl * kl + cfg.alpha_cost * (expected - cfg.budget).abs() / cfg.budget
            opt_r.zero_grad()
            loss.backward()
            opt_r.step()
            if (epoch + 1) % cfg.period == 0 or epoch == cfg.epochs - 1:
                dev = abs(float(expected.detach()) - cfg.budget) / cfg.budget
                snapshots.append(_Snapshot(dev, copy.deepcopy(model.state_dict())))
    if not snapshots:
        with torch.no_grad():
            _, r = model(probs)
            dev = abs(float((torch.softmax(r, 1) * cost).sum(1).mean()) - cfg.budget) / cfg.budget
        snapshots.append(_Snapshot(dev, copy.deepcopy(model.state_dict())))
    return snapshots


def _evaluate(model: _Scheduler, probs: torch.Tensor, labels: torch.Tensor, cost: torch.Tensor,
              budget: float) -> EENetFit:
    with torch.no_grad():
        q, r = model(probs)
    g = torch.softmax(r, dim=1)  # (N, K)
    shares = g.mean(0)  # (K,)
    thresholds = quantile_thresholds(q, shares)
    offset = fit_offset(q, thresholds, cost, budget)
    final = [None if t is None else t + offset for t in thresholds]
    exits = hard_exits(q, thresholds, offset)  # (N,)
    preds = probs.argmax(-1).gather(1, (exits - 1).unsqueeze(1)).squeeze(1)  # (N,)
    policy = EENetPolicy(probs.shape[1], [p.tolist() for p in model.a],
                         [p.tolist() for p in model.b], final, budget)
    return EENetFit(policy, float(cost[exits - 1].mean()), float((g * cost).sum(1).mean()),
                    float((preds == labels).double().mean()), offset,
                    [float(s) for s in shares])


def fit_eenet(logits: torch.Tensor, labels: torch.Tensor, costs: ExitCosts,
              cfg: EENetFitConfig | None = None) -> EENetFit:
    """Fit heads and thresholds on validation logits (N, K, C) for `cfg.budget`."""
    cfg = cfg or EENetFitConfig()
    cfg.validate(costs)
    if logits.dim() != 3 or logits.shape[1] != costs.num_exits:
        raise PolicyError(f"eenet: logits {tuple(logits.shape)} do not match "
                          f"{costs.num_exits} exit costs")
    if labels.shape != logits.shape[:1]:
        raise PolicyError(f"eenet: labels {tuple(labels.shape)} do not match logits "
                          f"{tuple(logits.shape)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend (seconds -> minutes)
    try:
        return _fit(probabilities(logits), labels, costs, cfg)
    finally:
        torch.set_num_threads(threads)


def _fit(probs: torch.Tensor, labels: torch.Tensor, costs: ExitCosts,
         cfg: EENetFitConfig) -> EENetFit:
    correct = (probs.argmax(-1) == labels.unsqueeze(1)).double()  # (N, K)
    cost = torch.tensor(costs.fractions(), dtype=torch.float64)  # (K,)
    best: EENetFit | None = None
    for restart in range(cfg.restarts):
        snaps = _train_once(probs, correct, cost, cfg, cfg.seed + restart)
        ok = [s for s in snaps if s.deviation < cfg.budget_tolerance] or \
            [min(snaps, key=lambda s: s.deviation)]
        for snap in ok[-3:]:  # the last few in-budget snapshots of this restart
            model = _Scheduler(probs.shape[1], probs.shape[2], cfg.hidden_rate)
            model.load_state_dict(snap.state)
            fit = _evaluate(model, probs, labels, cost, cfg.budget)
            if best is None or fit.val_accuracy > best.val_accuracy:
                best = fit
    assert best is not None
    return best
