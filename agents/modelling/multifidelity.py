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

``matloop.agents.decision.multifidelity.choose_requests`` turns the model into requests:
which candidate, at which fidelity.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

_DTYPE = torch.float64

__all__ = [
    "MultiFidelitySettings",
    "MultiFidelityGP",
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
        X, fidelity, y, yvar = self._finite_labels(X, fidelity, y, yvar, n_fidelities)
        lo, hi = self.bounds if self.bounds is not None else (X.min(axis=0), X.max(axis=0))
        self._lo = lo
        self._span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
        self._ymean = float(y.mean())
        self._ystd = float(y.std()) if y.std() > 1e-12 else 1.0
        train_X = self._inputs(X, fidelity)
        train_Y = torch.as_tensor((y - self._ymean) / self._ystd, dtype=_DTYPE).unsqueeze(-1)
        train_Yvar = None if yvar is None else torch.as_tensor(yvar / self._ystd**2, dtype=_DTYPE).unsqueeze(-1)
        self._train_fidelity = fidelity
        self._train_yvar = yvar

        sub = self._fit_subset(fidelity, np.random.default_rng(self.seed), X)
        self.fit_info = {
            "kind": self.settings.kind,
            "n_train": int(len(y)),
            "n_by_fidelity": [int(np.sum(fidelity == m)) for m in range(self.n_fidelities)],
            "n_fit": int(len(y) if sub is None else len(sub)),
            "fit_ok": True,
        }
        with torch.random.fork_rng(), warnings.catch_warnings():
            # fit_gpytorch_mll's retries redraw from the priors with torch's global generator (no generator arg)
            torch.manual_seed(self.seed)
            warnings.simplefilter("ignore")
            if hyperparameters_from is not None:
                model = self._conditioned(hyperparameters_from, train_X, train_Y, train_Yvar)
            else:
                model = self._fitted(train_X, train_Y, train_Yvar, sub)
        model.eval()
        self.model = model
        self._cache = None
        return self

    def _finite_labels(self, X, fidelity, y, yvar, n_fidelities):
        """The labels with a finite value (and variance) as arrays; sets ``n_fidelities``.

        Raises:
            ValueError: mismatched lengths, fewer than 2 labels or 2 fidelities, a bad fidelity.
        """
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
        return X, fidelity, y, yvar

    def _conditioned(self, src: MultiFidelityGP, train_X, train_Y, train_Yvar):
        """A model with ``src``'s hyperparameters conditioned on these labels (no fit)."""
        if (src.model is None or src.settings.kind != self.settings.kind
                or src.n_fidelities != self.n_fidelities or len(src._lo) != train_X.shape[1] - 1):
            raise ValueError("hyperparameters_from must be a fitted model of the same kind, fidelities and d")
        model = self._build(train_X, train_Y, train_Yvar)
        _load_hyperparameters(model, src.model, train_Yvar is not None or src._train_yvar is not None)
        self.fit_info.update(n_fit=0, reused_hyperparameters=True)
        return model

    def _fitted(self, train_X, train_Y, train_Yvar, sub):
        """A model whose hyperparameters maximise the marginal likelihood of the ``sub`` labels
        (all when None), conditioned on every label."""
        from botorch.exceptions.errors import ModelFittingError
        from botorch.fit import fit_gpytorch_mll
        from gpytorch.mlls import ExactMarginalLogLikelihood

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
            return fit_model
        model = self._build(train_X, train_Y, train_Yvar)
        _load_hyperparameters(model, fit_model, train_Yvar is not None)
        return model

    # -- prediction ----------------------------------------------------------------------

    def require_fit(self) -> None:
        """Raise RuntimeError unless the model has been fitted."""
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

    def training_features(self) -> tuple[np.ndarray, np.ndarray]:
        """The training points the posterior conditions on: ``n x d`` features (in the
        features' own units) and their ``n`` fidelities."""
        self.require_fit()
        X = self.model.train_inputs[0][:, :-1].numpy() * self._span + self._lo
        return X, self._train_fidelity

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
        self.require_fit()
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
        self.require_fit()
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
        self.require_fit()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Z = self._inputs(np.asarray(X, dtype=float), fidelity)
            mu, V = self._latent(Z)
            S = self.model.covar_module(Z).to_dense() - V @ V.T
        S = 0.5 * (S + S.T) * self._ystd**2
        return (mu * self._ystd + self._ymean).numpy(), S.numpy()

    def noise_variance(self, fidelity: int) -> float:
        """Observation noise variance at ``fidelity`` in the property's units (squared)."""
        self.require_fit()
        with torch.no_grad():
            return float(self._noise_std_units(np.array([fidelity]))[0]) * self._ystd**2

    def task_covariance(self) -> np.ndarray:
        """``M x M`` prior covariance of the fidelities' latent values at one point (property units^2).

        For ``mtgp`` this is the learned task covariance B (times the data kernel's unit
        variance); for ``smfgp`` it is the covariance its fidelity kernel implies.
        """
        self.require_fit()
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
