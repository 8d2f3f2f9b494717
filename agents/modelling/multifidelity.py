"""Multi-fidelity surrogate across oracle tiers, and a cost-aware choice of which tier to ask.

``MultiFidelityGP`` models one property measured at several fidelities (0 = cheapest, e.g.
a PBE gap; the highest = the one that counts, e.g. an experimental or HSE gap) as one
Gaussian process over (features, fidelity). Two botorch models sit behind it:

* ``kind='mtgp'`` (default): ``botorch.models.MultiTaskGP`` with the fidelity as the task
  column. The covariance is ICM, ``k((x, a), (x', b)) = k_x(x, x') B[a, b]``, with one
  ARD RBF data kernel (botorch's dimension-scaled LogNormal lengthscale prior) and a
  learned positive task covariance ``B``; each fidelity has its own constant mean and its
  own noise. ``point_term`` (default on) adds ``1{x = x'} B_point``: a part of each label
  that the features cannot explain (for a composition: which polymorph, which structure)
  but that the fidelities share, so that a candidate's cheap label informs its own top
  value beyond what its features say. ``components > 1`` makes the smooth part an LCM: a
  sum of that many (data kernel, task covariance) products.
* ``kind='smfgp'``: ``botorch.models.SingleTaskMultiFidelityGP`` with the fidelity as a
  data-fidelity feature ``s = m / (M - 1)`` in ``[0, 1]`` (``s = 1`` is the top) and its
  linear-truncated fidelity kernel (Wu et al. 2019): ``f(x, 1) = g0(x)`` and a lower
  fidelity adds an independent bias ``g1(x)`` with variance ``(1 - s)^2 (1 + s^2)^p``
  relative to ``g0``'s; one noise level for all fidelities.

Measured on the experimental-vs-PBE band-gap data (``python benchmarks/multifidelity.py
models``: 1,118 formulas with both gaps, 30 principal components of the default matminer
composition features (magpie, stoichiometry, valence orbitals),
every PBE gap plus 10 / 25 / 50 % of the training formulas' experimental gaps, held-out
experimental gap of 224 formulas, 5 splits; RMSE in eV / Gaussian NLL):

=================  ===============  ===============  ===============
model              10 %             25 %             50 %
=================  ===============  ===============  ===============
mtgp + point term  0.660 / 1.06     0.667 / 1.13     0.644 / 1.03
mtgp (ICM)         0.725 / 1.41     0.751 / 1.93     0.750 / 2.02
mtgp LCM, 2 terms  0.730 / 1.43     0.771 / 1.74     0.768 / 1.94
smfgp              0.742 / 1.31     0.719 / 1.31     0.681 / 1.21
single-fidelity    1.334 / 2.88     1.213 / 2.29     1.087 / 1.81
=================  ===============  ===============  ===============

The MTGP with the point term beat the SMFGP on 13 of 15 paired (split, fraction) RMSEs
and 14 of 15 NLLs, and is the default. Without it the ICM explains much of each PBE
label as noise and transfers little of it. For reference, a least-squares line
``expt = a PBE + b`` gives 0.689 / 1.07 at every fraction: on composition features the
GP's gain over calibrating a candidate's own PBE gap is small (0.02-0.04 eV), but unlike
the line it also predicts candidates without a PBE gap, which is what planning needs.
The SMFGP's linear-truncated kernel fixes the correlation of the two fidelities at one
point to ``1/sqrt(2)`` when they sit at ``s = 0`` and ``s = 1``.

``choose_requests`` turns the model into requests: which candidate, at which fidelity. Its
criterion is documented on the function.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from matloop.agents.decision.acquisition import Goal, log_expected_improvement, log_window_probability

_DTYPE = torch.float64

__all__ = [
    "MultiFidelitySettings",
    "MultiFidelityGP",
    "ChoiceSettings",
    "FidelityRequest",
    "choose_requests",
]


class MultiFidelitySettings(BaseModel):
    """Which multi-fidelity GP, and how its hyperparameters are fitted."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mtgp", "smfgp"] = Field(
        "mtgp",
        description="'mtgp': botorch MultiTaskGP with the fidelity as task (ICM/LCM task covariance, "
        "chosen by measurement on the band-gap data); 'smfgp': botorch SingleTaskMultiFidelityGP with "
        "the fidelity as a data-fidelity feature (linear-truncated fidelity kernel)",
    )
    rank: int | None = Field(
        None, ge=1, description="mtgp: rank of each task covariance's low-rank factor; None = number of fidelities"
    )
    components: int = Field(
        1,
        ge=1,
        le=4,
        description="mtgp: 1 = ICM (one data kernel); >1 = LCM with this many (data kernel, task covariance) terms",
    )
    point_term: bool = Field(
        True,
        description="mtgp: add a term that links the fidelities' labels of the same candidate only, "
        "k = 1{x = x'} B_point: the part of a label that the features cannot explain (polymorph, "
        "structure) but that the fidelities share, so a cheap label informs the top value of that candidate",
    )
    smfgp_prior: Literal["dim_scaled", "botorch"] = Field(
        "dim_scaled",
        description="smfgp lengthscale priors: 'dim_scaled' = the LogNormal prior scaled by sqrt(d) that the "
        "mtgp data kernel also uses (Hvarfner et al. 2024); 'botorch' = the model's own Gamma(3, 6)",
    )
    max_fit_points: int = Field(
        400,
        ge=4,
        description="hyperparameters are fitted on at most this many labels, balanced across fidelities "
        "(the posterior still conditions on every label): the marginal-likelihood fit is O(n^3) per step",
    )
    fit_maxiter: int = Field(100, ge=1, description="L-BFGS iterations for the hyperparameter fit")
    chunk_size: int = Field(4096, ge=1, description="pool rows per posterior evaluation when predicting")


class MultiFidelityGP:
    """One GP over (features, fidelity) that predicts any fidelity from labels at all of them.

    Inputs are min-max scaled to ``[0, 1]`` with ``bounds`` (or the training inputs'
    range) and the labels of all fidelities are standardised together, so that the task
    covariance keeps the relative scale of the fidelities.

    Args:
        settings: the model settings.
        bounds: ``2 x d`` lower/upper feature bounds; pass the pool's so that every pool
            point maps into ``[0, 1]^d``. None uses the training inputs' range.
        seed: seeds the fitting subset and, through a forked torch RNG, the random
            initialisation of the task covariance; the global torch RNG is left untouched.
    """

    def __init__(self, settings: MultiFidelitySettings | None = None, bounds: np.ndarray | None = None, seed: int = 0):
        self.settings = settings or MultiFidelitySettings()
        self.bounds = None if bounds is None else np.asarray(bounds, dtype=float)
        self.seed = int(seed)
        self.model = None
        self.n_fidelities = 0
        self.fit_info: dict = {}
        self._cache: dict | None = None

    # -- inputs --------------------------------------------------------------------------

    def _scale(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X, dtype=float)
        return torch.as_tensor((X - self._lo) / self._span, dtype=_DTYPE)

    def _fidelity_column(self, fidelity: np.ndarray) -> torch.Tensor:
        f = torch.as_tensor(np.asarray(fidelity, dtype=float), dtype=_DTYPE).reshape(-1, 1)
        if self.settings.kind == "smfgp":
            f = f / (self.n_fidelities - 1)
        return f

    def _inputs(self, X: np.ndarray, fidelity) -> torch.Tensor:
        """Model inputs ``m x (d + 1)``: scaled features and the fidelity column."""
        Xs = self._scale(X)
        fid = np.broadcast_to(np.asarray(fidelity, dtype=int), (Xs.shape[0],))
        if np.any((fid < 0) | (fid >= self.n_fidelities)):
            raise ValueError(f"fidelity must lie in [0, {self.n_fidelities - 1}]")
        return torch.cat([Xs, self._fidelity_column(fid)], dim=-1)

    # -- building and fitting --------------------------------------------------------------

    def _build(self, train_X: torch.Tensor, train_Y: torch.Tensor, train_Yvar: torch.Tensor | None):
        d = train_X.shape[-1] - 1
        M = self.n_fidelities
        s = self.settings
        if s.kind == "mtgp":
            from botorch.models import MultiTaskGP

            model = MultiTaskGP(
                train_X,
                train_Y,
                task_feature=d,
                train_Yvar=train_Yvar,
                all_tasks=list(range(M)),
                rank=min(s.rank or M, M),
                outcome_transform=None,
            )
            if s.components > 1:
                model.covar_module = _lcm_kernel(d, M, min(s.rank or M, M), s.components).to(train_X)
            else:
                # start from strongly correlated fidelities (botorch draws the factor at random):
                # B = 1 1^T + 0.1 I, correlation r / (r + 0.1); the data move it from there
                task = model.covar_module.kernels[1]
                task.covar_factor = torch.ones_like(task.covar_factor)
                task.var = torch.full_like(task.var, 0.1)
            if s.point_term:
                model.covar_module = _with_point_term(model.covar_module, d, M).to(train_X)
            return model
        from botorch.models import SingleTaskMultiFidelityGP

        model = SingleTaskMultiFidelityGP(
            train_X, train_Y, train_Yvar=train_Yvar, data_fidelities=[d], linear_truncated=True, outcome_transform=None
        )
        if s.smfgp_prior == "dim_scaled":
            model.covar_module = _ltf_kernel_dim_scaled(d).to(train_X)
        return model

    def _fit_subset(
        self, fidelity: np.ndarray, rng: np.random.Generator, X: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Indices of a fidelity-balanced subset of at most ``max_fit_points`` labels, or None.

        Each fidelity gets an equal share (unused shares go to the others). With ``X``,
        labels of candidates already chosen at a higher fidelity come first, so that the
        subset holds the same candidates at several fidelities (which is what identifies
        the inter-fidelity covariance).
        """
        n, cap = len(fidelity), self.settings.max_fit_points
        if n <= cap:
            return None
        groups = [rng.permutation(np.flatnonzero(fidelity == m)) for m in range(self.n_fidelities)]
        if X is not None:
            keys = [np.asarray(r).tobytes() for r in np.asarray(X, dtype=float)]
            share = cap // self.n_fidelities
            chosen: set = set()
            for m in reversed(range(self.n_fidelities)):
                g = groups[m]
                paired = np.array([keys[i] in chosen for i in g], dtype=bool)
                groups[m] = np.concatenate([g[paired], g[~paired]])
                chosen.update(keys[i] for i in groups[m][:share])
        take = [0] * len(groups)
        left = cap
        # water-fill: every fidelity gets an equal share, the unused share goes to the others
        while left > 0:
            open_ = [g for g in range(len(groups)) if take[g] < len(groups[g])]
            if not open_:
                break
            share = max(1, left // len(open_))
            for g in open_:
                add = min(share, len(groups[g]) - take[g], left)
                take[g] += add
                left -= add
        return np.sort(np.concatenate([grp[:k] for grp, k in zip(groups, take)]))

    def fit(
        self,
        X: np.ndarray,
        fidelity: np.ndarray,
        y: np.ndarray,
        yvar: np.ndarray | None = None,
        n_fidelities: int | None = None,
        hyperparameters_from: MultiFidelityGP | None = None,
    ) -> MultiFidelityGP:
        """Fit hyperparameters by maximising the marginal likelihood (botorch, L-BFGS).

        Args:
            X: ``n x d`` features.
            fidelity: ``n`` integer fidelities, 0 = cheapest.
            y: ``n`` labels in the property's units (non-finite labels are dropped).
            yvar: ``n`` known noise variances (``FixedNoiseGaussianLikelihood``), or None to
                infer the noise (per fidelity for mtgp, shared for smfgp).
            n_fidelities: number of fidelities M (default: the largest fidelity + 1); a
                fidelity without labels can still be predicted (mtgp: from the mean of the
                observed fidelities' task factors).
            hyperparameters_from: a fitted model of the same kind, fidelities and feature
                dimension: reuse its hyperparameters (in standardised units) and only
                condition on the new labels, skipping the marginal-likelihood fit (a loop can
                refit every few rounds and condition in between).

        Returns:
            self.
        """
        from botorch.exceptions.errors import ModelFittingError
        from botorch.fit import fit_gpytorch_mll
        from gpytorch.mlls import ExactMarginalLogLikelihood

        X = np.asarray(X, dtype=float)
        fidelity = np.asarray(fidelity, dtype=int).reshape(-1)
        y = np.asarray(y, dtype=float).reshape(-1)
        if not (len(X) == len(fidelity) == len(y)):
            raise ValueError(f"X, fidelity and y have {len(X)}, {len(fidelity)} and {len(y)} rows")
        ok = np.isfinite(y)
        if yvar is not None:
            yvar = np.asarray(yvar, dtype=float).reshape(-1)
            if len(yvar) != len(y):
                raise ValueError(f"yvar has {len(yvar)} entries but y has {len(y)}")
            ok &= np.isfinite(yvar)
            yvar = yvar[ok]
        X, fidelity, y = X[ok], fidelity[ok], y[ok]
        if len(y) < 2:
            raise ValueError("a multi-fidelity GP needs at least 2 finite labels")
        if np.any(fidelity < 0):
            raise ValueError("fidelities are non-negative integers")
        self.n_fidelities = int(n_fidelities or fidelity.max() + 1)
        if self.n_fidelities < 2:
            raise ValueError("a multi-fidelity GP needs at least 2 fidelities")
        if fidelity.max() >= self.n_fidelities:
            raise ValueError(f"fidelity {fidelity.max()} >= n_fidelities {self.n_fidelities}")
        if self.bounds is not None:
            lo, hi = self.bounds
        else:
            lo, hi = X.min(axis=0), X.max(axis=0)
        self._lo = lo
        self._span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
        self._ymean = float(y.mean())
        self._ystd = float(y.std()) if y.std() > 1e-12 else 1.0
        train_X = self._inputs(X, fidelity)
        train_Y = torch.as_tensor((y - self._ymean) / self._ystd, dtype=_DTYPE).unsqueeze(-1)
        train_Yvar = None if yvar is None else torch.as_tensor(yvar / self._ystd**2, dtype=_DTYPE).unsqueeze(-1)
        self._train_fidelity = fidelity
        self._train_yvar = yvar

        rng = np.random.default_rng(self.seed)
        sub = self._fit_subset(fidelity, rng, X)
        self.fit_info = {
            "kind": self.settings.kind,
            "n_train": int(len(y)),
            "n_by_fidelity": [int(np.sum(fidelity == m)) for m in range(self.n_fidelities)],
            "n_fit": int(len(y) if sub is None else len(sub)),
            "fit_ok": True,
        }
        with torch.random.fork_rng(), warnings.catch_warnings():
            torch.manual_seed(self.seed)
            warnings.simplefilter("ignore")
            if hyperparameters_from is not None:
                src = hyperparameters_from
                if (src.model is None or src.settings.kind != self.settings.kind
                        or src.n_fidelities != self.n_fidelities or len(src._lo) != X.shape[1]):
                    raise ValueError("hyperparameters_from must be a fitted model of the same kind, fidelities and d")
                model = self._build(train_X, train_Y, train_Yvar)
                _load_hyperparameters(model, src.model, train_Yvar is not None or src._train_yvar is not None)
                model.eval()
                self.model = model
                self._cache = None
                self.fit_info.update(n_fit=0, reused_hyperparameters=True)
                return self
            if sub is None:
                fit_model = self._build(train_X, train_Y, train_Yvar)
            else:
                fit_model = self._build(train_X[sub], train_Y[sub], None if train_Yvar is None else train_Yvar[sub])
            mll = ExactMarginalLogLikelihood(fit_model.likelihood, fit_model)
            try:
                fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": self.settings.fit_maxiter}})
            except ModelFittingError as exc:
                # keep the initial hyperparameters: a usable, if vague, model
                self.fit_info.update(fit_ok=False, fit_error=str(exc)[:200])
            if sub is None:
                model = fit_model
            else:
                model = self._build(train_X, train_Y, train_Yvar)
                _load_hyperparameters(model, fit_model, train_Yvar is not None)
        model.eval()
        self.model = model
        self._cache = None
        return self

    # -- prediction ----------------------------------------------------------------------

    def _require_fit(self):
        if self.model is None:
            raise RuntimeError("MultiFidelityGP used before fit")

    def _noise_std_units(self, fidelity: np.ndarray) -> torch.Tensor:
        """Observation noise variance (standardised units) at each of ``fidelity``."""
        from gpytorch.likelihoods import FixedNoiseGaussianLikelihood

        lik = self.model.likelihood
        fid = np.asarray(fidelity, dtype=int).reshape(-1)
        if isinstance(lik, FixedNoiseGaussianLikelihood):
            yv = self._train_yvar / self._ystd**2
            per = np.array(
                [yv[self._train_fidelity == m].mean() if np.any(self._train_fidelity == m) else yv.mean()
                 for m in range(self.n_fidelities)]
            )
            return torch.as_tensor(per[fid], dtype=_DTYPE)
        noise = lik.noise.detach().reshape(-1)
        if noise.numel() == 1:
            return noise.expand(len(fid)).clone()
        return noise[torch.as_tensor(fid)]

    def _predictive_cache(self) -> dict:
        """Cholesky factor of the training covariance and the weights of the posterior mean."""
        if self._cache is None:
            from gpytorch.likelihoods import FixedNoiseGaussianLikelihood

            gp = self.model
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Xtr = gp.train_inputs[0]
                ytr = gp.train_targets.reshape(-1)
                if isinstance(gp.likelihood, FixedNoiseGaussianLikelihood):
                    noise = gp.likelihood.noise.reshape(-1)
                else:
                    noise = self._noise_std_units(self._train_fidelity)
                K = gp.covar_module(Xtr).to_dense() + torch.diag(noise)
                eye = torch.eye(len(ytr), dtype=_DTYPE)
                jitter = 0.0
                for _ in range(8):
                    L, info = torch.linalg.cholesky_ex(K + jitter * eye)
                    if int(info) == 0:
                        break
                    jitter = max(jitter * 10, 1e-8)
                prior_mean = gp.forward(Xtr).mean.reshape(-1)
                alpha = torch.cholesky_solve((ytr - prior_mean).unsqueeze(-1), L).squeeze(-1)
                Linv = torch.linalg.solve_triangular(L, eye, upper=False)
                self._cache = {"Xtr": Xtr, "alpha": alpha, "LinvT": Linv.T.contiguous()}
        return self._cache

    def _latent(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior mean and ``V = K*^T L^-T`` rows at model inputs ``Z`` (``m x (d + 1)``)."""
        gp, cache = self.model, self._predictive_cache()
        Ks = gp.covar_module(Z, cache["Xtr"]).to_dense()
        mu = gp.forward(Z).mean.reshape(-1) + Ks @ cache["alpha"]
        return mu, Ks @ cache["LinvT"]

    def predict(
        self, X: np.ndarray, fidelity: int | np.ndarray, observation_noise: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at one fidelity, each ``m``.

        Streams ``X`` (``m x d``) in chunks of ``settings.chunk_size``; per chunk only the
        ``chunk x n`` cross-covariance is formed (mean = prior mean + k*^T alpha, var =
        k** - ||L^-1 k*||^2 with the cached Cholesky factor L of the training covariance),
        which equals botorch's ``model.posterior`` (checked in the tests).

        Args:
            X: ``m x d`` features (any array that slices by rows, e.g. a ``PcaView``).
            fidelity: one fidelity for all rows or an ``m`` array.
            observation_noise: add that fidelity's noise variance (the spread of a new
                measurement rather than of the latent value).
        """
        self._require_fit()
        gp = self.model
        m = X.shape[0]
        fid_all = np.broadcast_to(np.asarray(fidelity, dtype=int), (m,))
        mean, std = np.empty(m), np.empty(m)
        cs = self.settings.chunk_size
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for a in range(0, m, cs):
                fid = fid_all[a : a + cs]
                Z = self._inputs(np.asarray(X[a : a + cs], dtype=float), fid)
                mu, V = self._latent(Z)
                var = gp.covar_module(Z, diag=True).reshape(-1) - (V * V).sum(-1)
                var = var.clamp_min(1e-12)
                if observation_noise:
                    var = var + self._noise_std_units(fid)
                mean[a : a + cs] = (mu * self._ystd + self._ymean).numpy()
                std[a : a + cs] = (var.sqrt() * self._ystd).numpy()
        return mean, std

    def predict_fidelities(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior of every fidelity at each point, streamed in chunks.

        Returns:
            mean ``m x M`` and covariance ``m x M x M`` (between the fidelities' latent
            values at the same point), in the property's units.
        """
        self._require_fit()
        gp, M = self.model, self.n_fidelities
        m = X.shape[0]
        mean, cov = np.empty((m, M)), np.empty((m, M, M))
        cs = max(1, self.settings.chunk_size // M)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for a in range(0, m, cs):
                Xc = np.asarray(X[a : a + cs], dtype=float)
                c = len(Xc)
                Zs = [self._inputs(Xc, f) for f in range(M)]
                mus, Vs = zip(*(self._latent(Z) for Z in Zs))
                for f in range(M):
                    mean[a : a + c, f] = (mus[f] * self._ystd + self._ymean).numpy()
                    for g in range(f, M):
                        prior = gp.covar_module(Zs[f], Zs[g], diag=True).reshape(-1)
                        v = (prior - (Vs[f] * Vs[g]).sum(-1)) * self._ystd**2
                        cov[a : a + c, f, g] = cov[a : a + c, g, f] = v.numpy()
        return mean, cov

    def joint(self, X: np.ndarray, fidelity: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Joint posterior of the latent values at ``(X[i], fidelity[i])`` (keep ``m`` small).

        Returns:
            mean (``m``) and covariance (``m x m``) in the property's units.
        """
        self._require_fit()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Z = self._inputs(np.asarray(X, dtype=float), fidelity)
            mu, V = self._latent(Z)
            S = self.model.covar_module(Z).to_dense() - V @ V.T
        S = 0.5 * (S + S.T) * self._ystd**2
        return (mu * self._ystd + self._ymean).numpy(), S.numpy()

    def noise_variance(self, fidelity: int) -> float:
        """Observation noise variance at ``fidelity`` in the property's units (squared)."""
        self._require_fit()
        with torch.no_grad():
            return float(self._noise_std_units(np.array([fidelity]))[0]) * self._ystd**2

    def task_covariance(self) -> np.ndarray:
        """``M x M`` prior covariance of the fidelities' latent values at one point (property units^2).

        For ``mtgp`` this is the learned task covariance B (times the data kernel's unit
        variance); for ``smfgp`` it is the covariance its fidelity kernel implies.
        """
        self._require_fit()
        d = len(self._lo)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x0 = np.broadcast_to(self._lo + 0.5 * self._span, (self.n_fidelities, d))
            Z = self._inputs(x0, np.arange(self.n_fidelities))
            K = self.model.covar_module(Z).to_dense()
        return K.numpy() * self._ystd**2

    def task_correlation(self) -> np.ndarray:
        """``M x M`` learned inter-fidelity correlation of the latent values at one point.

        ICM: ``B[a, b] / sqrt(B[a, a] B[b, b])``, the same at every ``x``; the LCM and the
        smfgp kernel are stationary too, so one point gives the correlation everywhere.
        """
        K = self.task_covariance()
        s = np.sqrt(np.clip(np.diag(K), 1e-300, None))
        return K / np.outer(s, s)


def _load_hyperparameters(model, source, skip_likelihood: bool) -> None:
    """Copy ``source``'s hyperparameters into ``model`` (same architecture, other data).

    A fixed-noise likelihood holds one noise per training point, so it is skipped.
    """
    def keep(k):
        return not (skip_likelihood and k.startswith("likelihood"))

    state = {k: v for k, v in source.state_dict().items() if keep(k)}
    target = {k for k in model.state_dict() if keep(k)}
    if set(state) != target:
        raise RuntimeError(f"hyperparameters do not match the model: {sorted(set(state) ^ target)[:5]}")
    model.load_state_dict(state, strict=False)


def _same_input_kernel(active_dims):
    """``k(x, x') = 1`` when every feature of ``x`` and ``x'`` is equal, else 0 (no hyperparameters)."""
    from gpytorch.kernels import Kernel

    class _SameInput(Kernel):
        has_lengthscale = False

        def forward(self, x1, x2, diag=False, last_dim_is_batch=False, **params):
            if diag:
                return ((x1 - x2).abs().amax(-1) <= 1e-12).to(x1.dtype)
            return (torch.cdist(x1, x2, p=float("inf")) <= 1e-12).to(x1.dtype)

    return _SameInput(active_dims=active_dims)


def _with_point_term(covar_module, d: int, M: int):
    """``covar_module + 1{x = x'} B_point``, with a free task covariance ``B_point``."""
    from gpytorch.kernels import AdditiveKernel, IndexKernel, ProductKernel

    task = IndexKernel(num_tasks=M, rank=M, active_dims=[d])
    task.covar_factor.data.fill_(0.5)  # start correlated: B = 0.25 11^T + 0.05 I
    task.var = torch.full_like(task.var, 0.05)
    return AdditiveKernel(covar_module, ProductKernel(_same_input_kernel(list(range(d))), task))


def _lcm_kernel(d: int, M: int, rank: int, components: int):
    """Sum of ``components`` products of an ARD RBF data kernel and a free task covariance."""
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.kernels import AdditiveKernel, IndexKernel, ProductKernel

    parts = []
    for q in range(components):
        data = get_covar_module_with_dim_scaled_prior(ard_num_dims=d, active_dims=list(range(d)))
        # break the symmetry between components: start each at a different lengthscale
        data.lengthscale = data.lengthscale * 2.0**q
        task = IndexKernel(num_tasks=M, rank=rank, active_dims=[d])
        # first term: a strongly shared component; the others start small (fidelity-specific)
        task.covar_factor.data.fill_(1.0 if q == 0 else 0.1)
        task.var = torch.full_like(task.var, 0.1 if q == 0 else 0.05)
        parts.append(ProductKernel(data, task))
    return AdditiveKernel(*parts)


def _ltf_kernel_dim_scaled(d: int):
    """The linear-truncated fidelity kernel of SingleTaskMultiFidelityGP with dim-scaled priors."""
    from botorch.models.kernels.linear_truncated_fidelity import LinearTruncatedFidelityKernel
    from gpytorch.constraints import GreaterThan
    from gpytorch.kernels import ScaleKernel
    from gpytorch.priors import GammaPrior, LogNormalPrior

    def prior():
        return LogNormalPrior(loc=math.sqrt(2) + 0.5 * math.log(d), scale=math.sqrt(3))

    kern = LinearTruncatedFidelityKernel(
        fidelity_dims=[d],
        dimension=d + 1,
        nu=2.5,
        lengthscale_prior_unbiased=prior(),
        lengthscale_prior_biased=prior(),
        lengthscale_constraint_unbiased=GreaterThan(2.5e-2),
        lengthscale_constraint_biased=GreaterThan(2.5e-2),
        power_prior=GammaPrior(3.0, 3.0),
    )
    mode = math.exp(math.sqrt(2) + 0.5 * math.log(d) - 3.0)
    kern.covar_module_unbiased.lengthscale = mode
    kern.covar_module_biased.lengthscale = mode
    return ScaleKernel(kern, outputscale_prior=GammaPrior(2.0, 0.15))


# -- cost-aware choice of candidate and fidelity ---------------------------------------------


class ChoiceSettings(BaseModel):
    """How ``choose_requests`` scores (candidate, fidelity) pairs."""

    model_config = ConfigDict(extra="forbid")

    criterion: Literal["hits_per_cost", "variance_per_cost"] = Field(
        "hits_per_cost",
        description="'hits_per_cost': expected top-fidelity utility per unit of expected cost of "
        "screen-then-confirm vs confirm-now (see choose_requests); 'variance_per_cost': reduction of "
        "the top-fidelity posterior variance per unit cost on the shortlist by top-fidelity acquisition",
    )
    shortlist: int = Field(300, ge=1, description="candidates scored jointly (with fantasies) for the batch")
    quadrature: int = Field(
        64, ge=8, le=1024, description="equal-probability quadrature nodes over the outcome of a cheaper measurement"
    )


class FidelityRequest(NamedTuple):
    """One chosen request.

    Attributes:
        index: pool index of the candidate.
        fidelity: fidelity to measure it at.
        score: the criterion's value when it was picked (``hits_per_cost``: natural log of
            expected top-fidelity utility per unit cost; ``variance_per_cost``: top-fidelity
            variance reduction per unit cost, property units^2).
        rationale: one readable sentence saying why.
    """

    index: int
    fidelity: int
    score: float
    rationale: str


def _log_utility(goal: Goal, mu: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """log of what one top-fidelity measurement is worth: P(in window) or expected improvement."""
    if goal.kind == "window":
        return log_window_probability(mu, sd, goal.lo, goal.hi)
    if goal.kind == "max":
        return log_expected_improvement(mu, sd, best)
    return log_expected_improvement(-mu, sd, -best)


def _screen_log_rate(
    goal: Goal, mu, var_y, s2, best, c_m: float, c_top: float, nodes, log_w
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best log rate of "measure at m, then confirm at the top if it looks worth it", per candidate.

    Args:
        mu, var_y: ``K`` top-fidelity predictive mean and variance of a new top measurement.
        s2: ``K`` variance of the top-fidelity mean's shift that the fidelity-m outcome causes.

    Returns:
        ``K`` log rates, ``K`` promotion thresholds (utility), ``K`` promotion probabilities.
    """
    s = np.sqrt(np.clip(s2, 0.0, None))
    mu_after = mu[:, None] + s[:, None] * nodes[None, :]  # K x G
    sd_after = np.sqrt(np.clip(var_y - s2, 1e-12, None))[:, None]
    lu = _log_utility(goal, mu_after, np.broadcast_to(sd_after, mu_after.shape), best)
    # the outcomes must average to today's utility (tower property, for P(in window) and for
    # EI alike); removing the quadrature's error keeps a screen from creating expected hits
    lu_now = _log_utility(goal, mu, np.sqrt(var_y), best)
    lu_mean = np.logaddexp.reduce(lu + log_w[None, :], axis=1)
    lu = lu + np.where(np.isfinite(lu_mean) & np.isfinite(lu_now), lu_now - lu_mean, 0.0)[:, None]
    order = np.argsort(-lu, axis=1)
    lu_sorted = np.take_along_axis(lu, order, axis=1)
    lw_sorted = log_w[order]
    log_hits = np.logaddexp.accumulate(lw_sorted + lu_sorted, axis=1)
    p_promote = np.cumsum(np.exp(lw_sorted), axis=1)
    log_rate = log_hits - np.log(c_m + c_top * p_promote)
    j = np.argmax(log_rate, axis=1)
    rows = np.arange(len(mu))
    return log_rate[rows, j], np.exp(lu_sorted[rows, j]), p_promote[rows, j]


def choose_requests(
    model: MultiFidelityGP,
    X_pool: np.ndarray,
    costs: dict[int, float],
    top_fidelity: int,
    goal: Goal,
    q: int,
    exclude_by_fidelity: dict[int, np.ndarray] | None,
    rng: np.random.Generator,
    pending: list[tuple[int, int]] | None = None,
    *,
    settings: ChoiceSettings | None = None,
    max_cost: float | None = None,
) -> list[FidelityRequest]:
    """Choose up to ``q`` (candidate, fidelity) requests, trading information against cost.

    **Criterion** (``hits_per_cost``, the default). Only top-fidelity measurements count
    (a candidate is found when its top-fidelity value meets the goal), so every request is
    valued in the currency of the goal, top-fidelity utility ``u``, per unit of expected
    cost. ``u`` is the probability that a new top-fidelity measurement lies in the window
    (window goals) or its expected improvement over the best top-fidelity posterior mean
    at a top-fidelity training point (max/min goals). For candidate ``x``:

    * confirm now, at the top fidelity T: ``rate_T(x) = u(mu(x), sigma_y(x)) / c_T``, with
      the top-fidelity posterior mean ``mu`` and the predictive spread ``sigma_y`` of a new
      top measurement (latent variance plus the top fidelity's noise);
    * screen first, at a cheaper fidelity m: the outcome ``y_m(x)`` is not known yet, but
      under the model it moves the top-fidelity mean to ``mu + s_m z`` (z standard normal)
      and shrinks the variance to ``sigma_y^2 - s_m^2``, where
      ``s_m^2 = Cov(f_T(x), f_m(x))^2 / (Var f_m(x) + noise_m)`` is exactly the reduction
      in top-fidelity posterior variance at x that observing it at m brings. The plan
      "measure at m, then confirm at T if the updated ``u`` clears a threshold t" earns
      ``E[u' 1{u' >= t}]`` for ``c_m + c_T P(u' >= t)`` expected cost; ``rate_m(x)`` is
      that ratio at the best t (equal-probability quadrature over z, normalised so the
      outcomes average to today's ``u``; the best t is a threshold on the sorted outcomes).
      With ``c_m >= c_T`` screening can never win: ``E[u' 1{u' >= t}] <= u``.

    A cheap fidelity therefore wins where it is informative (``s_m`` large: strongly
    correlated, low noise) and the candidate is uncertain, and loses to confirming when the
    candidate is already likely good or the cheap fidelity says little (``s_m ~ 0`` makes
    ``rate_m < rate_T``). Pairs are ranked by these rates over the whole pool (streamed),
    the best ``settings.shortlist`` candidates are kept, and the batch is built greedily:
    each pick (and first every pending request) is conditioned into the joint posterior of
    the shortlist across all fidelities as a kriging-believer fantasy (its noisy value at
    its fidelity equals the posterior mean: means stay, covariances shrink), and ``s_m`` is
    recomputed from the conditioned covariance, so that a later pick is valued only for
    the information the batch has not already bought: a batch does not ask the same thing
    twice, directly or through a strongly correlated neighbour. ``mu`` and ``sigma_y``
    stay the unconditioned ones, because expected hits add up over a batch (a believer
    fantasy would otherwise make a confirmed point's neighbours look certain). At most one
    request per candidate per batch (a screen's outcome decides the confirmation later).

    ``variance_per_cost`` (ablation): shortlist by top-fidelity acquisition ``u`` and rank
    pairs by ``s_m^2 / c_m`` (``s_T^2 = sigma^4 / (sigma^2 + noise_T)`` for the top),
    with the same greedy fantasies.

    Args:
        model: a fitted ``MultiFidelityGP``.
        X_pool: ``N x d`` pool features (streamed by rows).
        costs: cost of one measurement at each fidelity; its keys are the fidelities that
            may be requested (the top one included).
        top_fidelity: the fidelity that counts.
        goal: what "good" means at the top fidelity.
        q: most requests to return.
        exclude_by_fidelity: pool indices already measured (or requested) at each
            fidelity; never asked again. A candidate measured at fidelity m is not asked
            at a lower one, and one measured at the top is done.
        rng: breaks exact ties (no other randomness).
        pending: (pool index, fidelity) pairs still running: fantasised, and their
            candidates are not asked again in this batch.
        settings: criterion settings.
        max_cost: stop adding requests once the next would take the batch's summed cost
            above this (cheaper pairs are still tried).

    Returns:
        Requests in the order picked. Fewer than ``q`` when the pool runs out or the cost
        cap binds.
    """
    settings = settings or ChoiceSettings()
    model._require_fit()
    if top_fidelity not in costs:
        raise ValueError(f"costs has no entry for the top fidelity {top_fidelity}")
    if any(not (c > 0) for c in costs.values()):
        raise ValueError(f"costs must be positive, got {costs}")
    fids = sorted(int(f) for f in costs)
    if fids[-1] != top_fidelity:
        raise ValueError(f"top_fidelity {top_fidelity} must be the highest fidelity in costs {fids}")
    if fids[-1] >= model.n_fidelities:
        raise ValueError(f"the model knows {model.n_fidelities} fidelities, costs name {fids}")
    N = X_pool.shape[0]
    F = len(fids)
    T = F - 1  # position of the top fidelity in fids
    c = np.array([float(costs[f]) for f in fids])
    pending = [(int(i), int(f)) for i, f in (pending or [])]

    # allowed[i, k]: may candidate i be asked at fids[k]?
    allowed = np.ones((N, F), dtype=bool)
    highest_done = np.full(N, -1)
    for f, idx in (exclude_by_fidelity or {}).items():
        idx = np.asarray(idx, dtype=int).reshape(-1)
        if len(idx):
            highest_done[idx] = np.maximum(highest_done[idx], int(f))
    for k, f in enumerate(fids):
        allowed[:, k] &= highest_done < f
    for i, _ in pending:
        allowed[i, :] = False
    avail = np.flatnonzero(allowed.any(axis=1))
    if q <= 0 or len(avail) == 0:
        return []

    # noise (property units^2) per fidelity and the top-fidelity incumbent for EI
    noise = np.array([model.noise_variance(f) for f in fids])
    best = float("nan")
    if goal.kind != "window":
        tr_top = model._train_fidelity == top_fidelity
        Xtr = model.model.train_inputs[0][:, :-1].numpy() * model._span + model._lo
        Xb = Xtr[tr_top] if np.any(tr_top) else Xtr
        mb, _ = model.predict(Xb, top_fidelity)
        best = float(np.max(mb) if goal.kind == "max" else np.min(mb))
    # equal-probability nodes (midpoint quantiles of z): u' is nearly a step in z when the
    # screen is very informative, where Gauss-Hermite nodes are far too coarse
    from scipy.special import ndtri

    nodes = ndtri((np.arange(settings.quadrature) + 0.5) / settings.quadrature)
    log_w = np.full(settings.quadrature, -math.log(settings.quadrature))

    def pair_scores(mu_top, var_top, cov_top_m, var_m, var_top_now=None):
        """``K x F`` scores of every (candidate, fidelity) pair and details for rationales.

        ``mu_top``/``var_top`` are the top fidelity's marginal posterior (what a
        confirmation is worth); ``cov_top_m``, ``var_m`` and ``var_top_now`` come from the
        posterior conditioned on the batch so far (what a measurement still teaches).
        """
        var_top_now = var_top if var_top_now is None else np.minimum(var_top_now, var_top)
        var_y = var_top + noise[T]
        s2 = np.zeros((len(mu_top), F))
        for k in range(F):
            s2[:, k] = np.clip(cov_top_m[:, k] ** 2 / (var_m[:, k] + noise[k]), 0.0, var_top_now)
        lu = _log_utility(goal, mu_top, np.sqrt(var_y), best)
        K_ = len(mu_top)
        detail = {"log_u": lu, "s2": s2, "var_top": var_top, "t": np.zeros((K_, F)), "p": np.ones((K_, F))}
        S = np.empty((len(mu_top), F))
        if settings.criterion == "variance_per_cost":
            S[:] = s2 / c[None, :]
            return S, detail
        S[:, T] = lu - math.log(c[T])
        for k in range(T):
            S[:, k], detail["t"][:, k], detail["p"][:, k] = _screen_log_rate(
                goal, mu_top, var_y, s2[:, k], best, c[k], c[T], nodes, log_w
            )
        return S, detail

    # -- 1. score every available candidate (streamed) and shortlist
    cs = model.settings.chunk_size
    key = np.empty(len(avail))
    for a in range(0, len(avail), cs):
        rows = avail[a : a + cs]
        mean, cov = model.predict_fidelities(X_pool[rows])
        S, detail = pair_scores(
            mean[:, top_fidelity],
            cov[:, top_fidelity, top_fidelity],
            cov[:, top_fidelity, fids],
            cov[:, fids, fids],  # each fidelity's own variance
        )
        if settings.criterion == "variance_per_cost":
            key[a : a + cs] = detail["log_u"]  # shortlist by top-fidelity acquisition
        else:
            key[a : a + cs] = np.max(np.where(allowed[rows], S, -np.inf), axis=1)
    key = key + 1e-9 * rng.random(len(key))  # exact ties only
    K = int(min(settings.shortlist, len(avail)))
    short = avail[np.argsort(-key, kind="stable")[:K]]

    # -- 2. joint posterior over pending pairs and shortlist x fidelities, greedy with fantasies
    P = len(pending)
    Xj = np.vstack(
        ([np.asarray(X_pool[[i for i, _ in pending]], dtype=float)] if P else [])
        + [np.asarray(X_pool[short], dtype=float)] * F
    )
    fj = np.concatenate([np.array([f for _, f in pending], dtype=int), np.repeat(np.array(fids), K)])
    mu_j, Sig = model.joint(Xj, fj)
    noise_of = {f: noise[k] for k, f in enumerate(fids)}

    def condition(Sig, j, nv):
        col = Sig[:, j].copy()
        return Sig - np.outer(col, col) / (col[j] + nv)

    pos = P + np.arange(F)[None, :] * K + np.arange(K)[:, None]  # K x F positions in the joint
    mu_top = mu_j[pos[:, T]]
    var_top = np.clip(np.diag(Sig)[pos[:, T]], 1e-12, None)  # marginal: expected hits add over a batch
    for p, (_, f) in enumerate(pending):
        Sig = condition(Sig, p, noise_of.get(f, model.noise_variance(f)))
    ok = allowed[short].copy()
    out: list[FidelityRequest] = []
    spent = 0.0
    while len(out) < q and ok.any():
        dg = np.diag(Sig)
        cov_top_m = Sig[pos[:, T][:, None], pos]
        var_m = np.clip(dg[pos], 1e-12, None)
        S, detail = pair_scores(mu_top, var_top, cov_top_m, var_m, np.clip(dg[pos[:, T]], 1e-12, None))
        fits = ok & (c[None, :] <= (math.inf if max_cost is None else max_cost - spent) + 1e-12)
        if not fits.any():
            break
        S = np.where(fits, S, -np.inf)
        r, k = np.unravel_index(int(np.argmax(S)), S.shape)
        why = _rationale(settings, goal, fids, c, k, T, S[r], detail, r)
        out.append(FidelityRequest(int(short[r]), fids[k], float(S[r, k]), why))
        spent += c[k]
        ok[r, :] = False
        Sig = condition(Sig, pos[r, k], noise[k])
    return out


def _rationale(settings, goal, fids, c, k, T, S_row, detail, r) -> str:
    u_name = "P(in window)" if goal.kind == "window" else "expected improvement"
    u = math.exp(detail["log_u"][r])
    frac = detail["s2"][r, k] / max(detail["var_top"][r], 1e-300)
    if settings.criterion == "variance_per_cost":
        return (
            f"fidelity {fids[k]} (cost {c[k]:g}) removes {frac:.0%} of the top-fidelity variance here: "
            f"{S_row[k]:.3g} per unit cost (top-fidelity {u_name} {u:.3g})"
        )
    per = "hits" if goal.kind == "window" else "improvement"
    if k == T:
        alt = max(range(T), key=lambda j: S_row[j]) if T else None
        tail = ""
        if alt is not None and np.isfinite(S_row[alt]):
            tail = f"; screening at fidelity {fids[alt]} would give {math.exp(S_row[alt]):.3g}"
        return (
            f"confirm at fidelity {fids[k]} (cost {c[k]:g}): {u_name} {u:.3g}, "
            f"{math.exp(S_row[k]):.3g} {per} per unit cost{tail}"
        )
    return (
        f"screen at fidelity {fids[k]} (cost {c[k]:g}): {u_name} now {u:.3g}; the result explains {frac:.0%} of the "
        f"top-fidelity variance; screen-then-confirm earns {math.exp(S_row[k]):.3g} {per} per unit cost "
        f"(confirm if {u_name} >= {detail['t'][r, k]:.2g}, chance {detail['p'][r, k]:.0%}) vs "
        f"{math.exp(S_row[T]):.3g} confirming now at fidelity {fids[T]} (cost {c[T]:g})"
    )
