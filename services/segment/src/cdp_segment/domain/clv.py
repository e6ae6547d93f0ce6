"""Customer lifetime value and churn probability: BG/NBD with Gamma-Gamma, fitted by maximum likelihood.

BG/NBD (Fader, Hardie and Lee, 2005) models repeat purchases: while alive a customer
buys at a Poisson rate drawn from Gamma(r, alpha), and after each purchase drops
out with a probability drawn from Beta(a, b). Gamma-Gamma (Fader, Hardie and Lee,
2005) models the mean order value, assumed independent of the purchase rate. The
`lifetimes` package that implemented both is unmaintained, and `btyd` is a 2022
beta, so both likelihoods are fitted here with scipy.optimize. Time is in days.
scipy is imported where it is used: it is slow to import and only model runs need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Customers:
    """Per customer: repeat purchases x, time of the last purchase t_x, age T (days), mean order value."""

    frequency: Array
    recency: Array
    age: Array
    monetary: Array


@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters."""

    r: float
    alpha: float
    a: float
    b: float

    def _odds_dead(self, c: Customers) -> Array:
        x, t_x, t = c.frequency, c.recency, c.age
        ratio = np.where(
            x > 0,
            self.a
            / (self.b + np.maximum(x, 1) - 1)
            * ((self.alpha + t) / (self.alpha + t_x)) ** (self.r + x),
            0.0,
        )
        return np.asarray(ratio, dtype=np.float64)

    def probability_alive(self, c: Customers) -> Array:
        """Return P(alive) of each customer now."""
        return 1.0 / (1.0 + self._odds_dead(c))

    def expected_purchases(self, c: Customers, horizon: float) -> Array:
        """Return each customer's expected number of purchases in the next `horizon` days."""
        x, t = c.frequency, c.age
        a, b, r, alpha = self.a, self.b, self.r, self.alpha
        if abs(a - 1) < 1e-9:
            a = 1 + 1e-9  # the formula's removable singularity: its limit, to nine places
        from scipy import special  # type: ignore[import-untyped]

        z = horizon / (alpha + t + horizon)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        first = (a + b + x - 1) / (a - 1) * (1 - ((alpha + t) / (alpha + t + horizon)) ** (r + x) * hyp)
        return np.asarray(first / (1 + self._odds_dead(c)), dtype=np.float64)


def _bgnbd_negative_ll(log_params: Array, x: Array, t_x: Array, t: Array) -> float:
    from scipy import special

    r, alpha, a, b = np.exp(log_params)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + t)
    a4 = np.where(
        x > 0, np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(alpha + t_x), -np.inf
    )
    return float(-np.sum(a1 + a2 + np.logaddexp(a3, a4)))


def fit_bgnbd(c: Customers) -> BgNbd:
    """Fit BG/NBD by maximum likelihood."""
    from scipy import optimize

    result = optimize.minimize(
        _bgnbd_negative_ll,
        x0=np.log([1.0, 30.0, 1.0, 3.0]),
        args=(c.frequency, c.recency, c.age),
        method="Nelder-Mead",
        options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-6},
    )
    r, alpha, a, b = np.exp(result.x)
    # Any a > 0 is a valid fit: in the expected-purchase formula (a + b + x - 1) / (a - 1) and the
    # bracket it multiplies change sign together (a = 1 exactly is its removable singularity).
    return BgNbd(r=float(r), alpha=float(alpha), a=float(a), b=float(b))


@dataclass(frozen=True)
class GammaGamma:
    """Fitted Gamma-Gamma parameters of mean order value."""

    p: float
    q: float
    v: float

    def expected_order_value(self, c: Customers) -> Array:
        """Return each customer's expected mean order value (population mean for one-time buyers)."""
        x = np.maximum(c.frequency, 0)
        p, q, v = self.p, self.q, self.v
        population = p * v / (q - 1)
        weight = p * x / (p * x + q - 1)
        return np.asarray((1 - weight) * population + weight * c.monetary, dtype=np.float64)


def _gg_negative_ll(log_params: Array, x: Array, m: Array) -> float:
    from scipy import special

    p, q, v = np.exp(log_params)
    ll = (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(v)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(x * m + v)
    )
    return float(-np.sum(ll))


def fit_gamma_gamma(c: Customers) -> GammaGamma:
    """Fit Gamma-Gamma on repeat customers with a positive mean order value."""
    from scipy import optimize

    mask = (c.frequency > 0) & (c.monetary > 0)
    result = optimize.minimize(
        _gg_negative_ll,
        x0=np.log([2.0, 3.0, 50.0]),
        args=(c.frequency[mask], c.monetary[mask]),
        method="Nelder-Mead",
        options={"maxiter": 4000},
    )
    p, q, v = np.exp(result.x)
    return GammaGamma(p=float(p), q=float(max(q, 1.0001)), v=float(v))


def simulate_customers(
    *, count: int, calibration_days: float, holdout_days: float, params: BgNbd, seed: int = 7
) -> tuple[Customers, Array]:
    """Simulate a shop's customers by the BG/NBD story; return the calibration summary and holdout purchases."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(params.r, 1 / params.alpha, count)
    dropout = rng.beta(params.a, params.b, count)
    first = rng.uniform(0, calibration_days * 0.8, count)
    frequency = np.zeros(count)
    recency = np.zeros(count)
    holdout = np.zeros(count)
    spend = rng.gamma(3.0, 20.0, count)
    monetary = np.zeros(count)
    end = calibration_days + holdout_days
    for i in range(count):
        now, alive, purchases = first[i], True, []
        while alive:
            now += rng.exponential(1 / rates[i])
            if now > end:
                break
            purchases.append(now)
            alive = rng.random() > dropout[i]
        in_calibration = [p for p in purchases if p <= calibration_days]
        frequency[i] = len(in_calibration)
        recency[i] = (in_calibration[-1] - first[i]) if in_calibration else 0.0
        holdout[i] = len(purchases) - len(in_calibration)
        monetary[i] = rng.gamma(10.0, spend[i] / 10.0) if in_calibration else 0.0
    age = calibration_days - first
    return Customers(frequency=frequency, recency=recency, age=age, monetary=monetary), holdout
