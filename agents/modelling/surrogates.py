"""Surrogate models behind the ``Surrogate`` protocol: a botorch GP and a random forest.

Both predict in chunks so that a pool of 10^6 candidates never needs more than one chunk
of cross-covariances in memory. The GP keeps its fitted botorch model in ``.model`` for
the Monte-Carlo batch acquisitions in ``matloop.agents.decision.acquisition``.

Surrogates are plug-ins: ``make_surrogate`` looks ``SurrogateSettings.kind`` up in the
``matloop.surrogates`` entry-point group (``gp`` and ``rf`` are registered there by matloop
itself) and builds ``cls(settings, seed=seed)``. A class that sets ``takes_pool_bounds``
also receives ``bounds=`` (the pool's ``2 x d`` feature bounds) and ``n_fraction_columns=``.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from matloop.core import registry

_DTYPE = torch.float64


class SurrogateSettings(BaseModel):
    """Which model maps features to the objective, and its hyperparameter priors."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        "gp",
        description="'gp': botorch SingleTaskGP; 'rf': sklearn random forest; or the name of a surrogate "
        "plug-in registered under the 'matloop.surrogates' entry-point group",
    )
    kernel: Literal["rbf", "matern52"] = Field(
        "rbf", description="GP kernel (ARD over every feature): squared exponential or Matern-5/2"
    )
    prior: Literal["dim_scaled", "gamma"] = Field(
        "dim_scaled",
        description="GP hyperparameter priors: 'dim_scaled' = botorch's LogNormal lengthscale prior "
        "scaled by sqrt(d) (Hvarfner et al. 2024); 'gamma' = BayBE's smoothed-EDBO Gamma priors on "
        "lengthscale, outputscale and noise, interpolated by input dimension",
    )
    n_trees: int = Field(200, ge=2, description="trees in the random forest (kind='rf')")
    min_samples_leaf: int = Field(1, ge=1, description="random forest minimum samples per leaf")
    chunk_size: int = Field(16384, ge=1, description="candidates per posterior evaluation when predicting")
    max_fit_points: int = Field(
        300,
        ge=2,
        description="GP hyperparameters are fitted on a random subset of at most this many labels "
        "(the posterior still conditions on all of them): the marginal-likelihood fit is O(n^3) per step",
    )
    fit_maxiter: int = Field(100, ge=1, description="L-BFGS iterations for the GP hyperparameter fit")
    loo_fit_maxiter: int = Field(
        30,
        ge=1,
        description="L-BFGS iterations for each of the two half-data fits behind the GP's leave-one-out "
        "predictions (the skill measurement of skill-aware acquisition), which only has to tell a "
        "model that ranks from one that does not. Two thirds of a plan's fits are these: on 4,000 "
        "Materials Project formulas (29 fits from 20 to 300 labels, 3 label orders; "
        "benchmarks/gp_refit.py, benchmarks/results/gp_refit.txt) 30 instead of 100 here need 1.7x fewer "
        "likelihood evaluations per plan sequence (7,038 against 12,071) with the same model",
    )
    warp: Literal["none", "rank"] = Field(
        "none",
        description="max/min goals: 'rank' fits the model to normal scores of the labels' ranks "
        "(a Gaussian copula, monotone, so the ordering is kept); reported means are mapped back by "
        "piecewise-linear interpolation",
    )
    pca_variance: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="GP only: rotate the pool's features onto their principal components (fitted on "
        "the whole unlabelled pool) and keep the fewest that explain this fraction of the variance; "
        "None uses the features as given",
    )
    kernel_structure: Literal["single", "additive_fractions"] = Field(
        "single",
        description="GP only: 'single' = one ARD kernel over every feature; 'additive_fractions' = "
        "k_descriptors + k_fractions, a sum of two scaled kernels (each with its own priors for its "
        "block's dimension), the second acting only on the pool's element fractions, which the "
        "campaign and the benchmark then append as the last block (features.fraction_block). For "
        "composition-spread libraries with few elements: it raises the recall on the JCAP OER plates "
        "but is mixed on pools spanning many elements (one SuperCon seed found nothing), hence not "
        "the default (figures: README "
        "'Measured figures', from campaigns/benchmarks/*_additive.yaml and "
        "benchmarks/results/retrospective/*_additive.json). Not with pca_variance",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="GP only: where the float32 screening of the pool runs ('auto' = the GPU when "
        "torch sees one). The hyperparameter fit and the float64 shortlist stay on the CPU",
    )

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, kind: str) -> str:
        known = set(_BUILTIN) | set(registry.names("matloop.surrogates"))
        if kind not in known:
            raise ValueError(f"unknown surrogate kind {kind!r}; known: {', '.join(sorted(known))}")
        return kind

    @model_validator(mode="after")
    def _check_kernel_structure(self):
        if self.kernel_structure == "additive_fractions":
            if self.kind != "gp":
                raise ValueError("kernel_structure 'additive_fractions' is a GP kernel; it needs kind 'gp'")
            if self.pca_variance is not None:
                raise ValueError(
                    "kernel_structure 'additive_fractions' cannot be combined with pca_variance: the fraction "
                    "kernel needs the element-fraction columns as they are (drop one of the two)"
                )
        return self

    @property
    def fraction_block(self) -> bool:
        """Whether the GP expects the element-fraction block as the last columns of the pool."""
        return self.kind == "gp" and self.kernel_structure == "additive_fractions"


def _gamma_prior_moments(d: int) -> tuple[float, ...]:
    """BayBE's "smoothed EDBO" Gamma priors (Shields et al. 2021), interpolated by dimension.

    Between 8 and 75 input dimensions the concentration/rate of each prior moves linearly
    from EDBO's low-dimensional values to the mean of its one-hot and Mordred values.

    Returns:
        lengthscale (concentration, rate, initial), outputscale (...), noise (...).
    """
    lim = (8, 75)

    def lerp(a, b):
        return float(np.interp(d, lim, [a, b]))

    return (
        lerp(1.2, 2.5), lerp(1.1, 0.55), lerp(0.2, 6.0),
        lerp(5.0, 3.5), lerp(0.5, 0.15), lerp(8.0, 15.0),
        lerp(1.05, 1.5), lerp(0.5, 0.1), lerp(0.1, 5.0),
    )


class PcaView:
    """Read-only view of an ``N x d`` pool through a PCA projection (``N x k``), row by row.

    Indexing returns float64 projected rows, so a 10^6-row pool is never projected whole.
    """

    def __init__(self, X: np.ndarray, mean: np.ndarray, components: np.ndarray):
        self.X, self.mean, self.components = X, mean, components
        self.shape = (X.shape[0], components.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        return (np.asarray(self.X[idx], dtype=float) - self.mean) @ self.components


def fit_pca(X: np.ndarray, variance: float, chunk_size: int = 65536) -> PcaView:
    """Principal components of ``X`` (``N x d``) explaining ``variance`` of its total variance.

    Mean and covariance are accumulated over chunks (float64); the components come from
    ``numpy.linalg.eigh`` of the ``d x d`` covariance.
    """
    n, d = X.shape
    s = np.zeros(d)
    S = np.zeros((d, d))
    for a in range(0, n, chunk_size):
        c = np.asarray(X[a : a + chunk_size], dtype=float)
        s += c.sum(axis=0)
        S += c.T @ c
    mean = s / n
    cov = S / n - np.outer(mean, mean)
    w, V = np.linalg.eigh(0.5 * (cov + cov.T))
    w, V = np.clip(w[::-1], 0, None), V[:, ::-1]
    frac = np.cumsum(w) / max(w.sum(), 1e-300)
    k = int(min(d, np.searchsorted(frac, variance - 1e-12) + 1))
    return PcaView(X, mean, V[:, :k])


class GPSurrogate:
    """Exact GP: botorch ``SingleTaskGP`` with ``Normalize`` inputs and ``Standardize`` outputs.

    Args:
        settings: the surrogate settings.
        bounds: ``2 x d`` lower/upper feature bounds for ``Normalize``; pass the pool's bounds
            so that every pool point maps into ``[0, 1]^d``. None learns them from the
            training inputs.
        seed: seed of the subset used for the hyperparameter fit when there are more than
            ``settings.max_fit_points`` labels.
        n_fraction_columns: with ``settings.kernel_structure == 'additive_fractions'``, the
            number ``k`` of trailing feature columns that hold the element fractions (the
            ``features.fraction_block`` of the pool); the kernel is then
            ``k_descriptors(x[:d-k]) + k_fractions(x[d-k:])``. Ignored by the single kernel.
    """

    takes_pool_bounds = True  # make_surrogate passes the pool's bounds and fraction columns

    def __init__(
        self,
        settings: SurrogateSettings | None = None,
        bounds: np.ndarray | None = None,
        seed: int = 0,
        n_fraction_columns: int = 0,
    ):
        self.settings = settings or SurrogateSettings()
        self.bounds = None if bounds is None else np.asarray(bounds, dtype=float)
        self.seed = int(seed)
        self.n_fraction_columns = int(n_fraction_columns)
        self.model = None
        self.fit_info: dict = {}
        self._cache: dict | None = None

    def _covar_module(self, d: int):
        if self.settings.kernel_structure == "additive_fractions":
            k = self.n_fraction_columns
            if not 0 < k < d:
                raise ValueError(
                    f"kernel_structure 'additive_fractions' needs the element-fraction block as the last "
                    f"n_fraction_columns of the {d} features, with descriptors before it; got "
                    f"n_fraction_columns={k} (append matloop.agents.modelling.features.fraction_block to the pool and "
                    "pass its width to select_batch / make_surrogate)"
                )
            # two scaled kernels with their own priors (each for its block's dimension), sharing the
            # prior variance between them at the start
            desc = self._block_kernel(d - k, list(range(d - k)), share=0.5)
            frac = self._block_kernel(k, list(range(d - k, d)), share=0.5)
            return desc + frac
        return self._block_kernel(d, None)

    def _block_kernel(self, d: int, active_dims: list[int] | None, share: float | None = None):
        """The kernel over ``d`` features (``active_dims``; None = all): the settings' kernel and
        priors; with ``share`` wrapped in a ``ScaleKernel`` whose outputscale starts at ``share``
        (dim_scaled) or ``share`` x the Gamma prior's initial value (gamma)."""
        from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
        from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
        from gpytorch.priors import GammaPrior

        rbf = self.settings.kernel == "rbf"
        if self.settings.prior == "dim_scaled":
            base = get_covar_module_with_dim_scaled_prior(ard_num_dims=d, use_rbf_kernel=rbf, active_dims=active_dims)
            if share is None:
                return base
            kern = ScaleKernel(base)
            kern.outputscale = share
            return kern
        ls_a, ls_b, ls_0, os_a, os_b, os_0, _, _, _ = _gamma_prior_moments(d)
        ls_prior = GammaPrior(ls_a, ls_b)
        base = (
            RBFKernel(ard_num_dims=d, lengthscale_prior=ls_prior, active_dims=active_dims)
            if rbf
            else MaternKernel(nu=2.5, ard_num_dims=d, lengthscale_prior=ls_prior, active_dims=active_dims)
        )
        base.lengthscale = ls_0
        kern = ScaleKernel(base, outputscale_prior=GammaPrior(os_a, os_b))
        kern.outputscale = os_0 * (1.0 if share is None else share)
        return kern

    def _likelihood(self, d: int):
        if self.settings.prior == "dim_scaled":
            return None  # botorch's default LogNormal noise prior
        from gpytorch.likelihoods import GaussianLikelihood
        from gpytorch.priors import GammaPrior

        *_, n_a, n_b, n_0 = _gamma_prior_moments(d)
        lik = GaussianLikelihood(noise_prior=GammaPrior(n_a, n_b))
        lik.noise = n_0
        return lik

    def _build(self, train_X, train_Y, train_Yvar, bounds):
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Normalize, Standardize

        d = train_X.shape[-1]
        kwargs = {}
        lik = self._likelihood(d)
        if lik is not None and train_Yvar is None:
            kwargs["likelihood"] = lik
        return SingleTaskGP(
            train_X,
            train_Y,
            train_Yvar=train_Yvar,
            covar_module=self._covar_module(d),
            input_transform=Normalize(d=d, bounds=bounds),
            outcome_transform=Standardize(m=1),
            **kwargs,
        )

    def fit(self, X: np.ndarray, y: np.ndarray, yvar: np.ndarray | None = None) -> None:
        """Fit hyperparameters by maximising the marginal likelihood (L-BFGS, botorch).

        With more than ``settings.max_fit_points`` labels the hyperparameters are fitted on
        a random subset and then the GP conditions on every label.

        Args:
            X: ``n x d`` training features.
            y: ``n`` training targets.
            yvar: ``n`` known noise variances, or None to infer a homoscedastic noise.
        """
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float).reshape(-1)
        n, d = X.shape
        train_X = torch.as_tensor(X, dtype=_DTYPE)
        train_Y = torch.as_tensor(y, dtype=_DTYPE).unsqueeze(-1)
        train_Yvar = None if yvar is None else torch.as_tensor(np.asarray(yvar, float), dtype=_DTYPE).reshape(-1, 1)
        if self.bounds is not None:
            bounds = torch.as_tensor(self.bounds, dtype=_DTYPE).clone()
            # a constant column has lower == upper: widen it so Normalize does not divide by 0
            flat = (bounds[1] - bounds[0]) <= 1e-12
            bounds[1, flat] = bounds[0, flat] + 1.0
        else:
            bounds = torch.stack([train_X.min(0).values, train_X.max(0).values])
            bounds[1] = torch.maximum(bounds[1], bounds[0] + 1e-6)
        sub = None
        if n > self.settings.max_fit_points:
            sub = np.sort(np.random.default_rng(self.seed).choice(n, self.settings.max_fit_points, replace=False))
        self._train = (train_X, train_Y, train_Yvar, bounds)
        self.fit_info = {"n_train": n, "d": d, "n_fit": n if sub is None else len(sub), "fit_ok": True}
        self.model, error = self._fit_on(sub)
        if error:
            self.fit_info.update(fit_ok=False, fit_error=error)
        self._cache = None

    def _fit_on(self, sub: np.ndarray | None, maxiter: int | None = None):
        """A model conditioned on every training label with hyperparameters fitted on the rows ``sub``
        (None: all) in at most ``maxiter`` L-BFGS iterations (None: ``settings.fit_maxiter``); and
        the fit's error message, or None."""
        from botorch.exceptions.errors import ModelFittingError
        from botorch.fit import fit_gpytorch_mll
        from gpytorch.mlls import ExactMarginalLogLikelihood

        train_X, train_Y, train_Yvar, bounds = self._train
        fit_model = self._build(
            train_X[sub] if sub is not None else train_X,
            train_Y[sub] if sub is not None else train_Y,
            None if train_Yvar is None else (train_Yvar[sub] if sub is not None else train_Yvar),
            bounds,
        )
        mll = ExactMarginalLogLikelihood(fit_model.likelihood, fit_model)
        error = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                maxiter = self.settings.fit_maxiter if maxiter is None else maxiter
                fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": maxiter}})
            except ModelFittingError as exc:
                # keep the prior-mode hyperparameters: a usable, if vague, model
                error = str(exc)[:200]
        if sub is None:
            model = fit_model
        else:
            model = self._build(train_X, train_Y, train_Yvar, bounds)
            model.covar_module.load_state_dict(fit_model.covar_module.state_dict())
            model.mean_module.load_state_dict(fit_model.mean_module.state_dict())
            if train_Yvar is None:
                model.likelihood.load_state_dict(fit_model.likelihood.state_dict())
        model.eval()
        return model, error

    def _predictive_cache(self) -> dict:
        """Cholesky factor of the training covariance and the weights of the posterior mean."""
        if self._cache is None:
            gp = self.model
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Xtr = gp.train_inputs[0]  # normalised (eval mode stores transformed inputs)
                ytr = gp.train_targets  # standardised
                noise = gp.likelihood.noise.reshape(-1).expand(len(ytr))
                K = gp.covar_module(Xtr).to_dense() + torch.diag(noise)
                jitter = 0.0
                for _ in range(6):
                    L, info = torch.linalg.cholesky_ex(K + jitter * torch.eye(len(ytr), dtype=_DTYPE))
                    if int(info) == 0:
                        break
                    jitter = max(jitter * 10, 1e-8)
                c = gp.mean_module.constant.reshape(())
                alpha = torch.cholesky_solve((ytr - c).unsqueeze(-1), L).squeeze(-1)
                Linv = torch.linalg.solve_triangular(L, torch.eye(len(ytr), dtype=_DTYPE), upper=False)
                self._cache = {
                    "Xtr": Xtr,
                    "c": c,
                    "alpha": alpha,
                    "LinvT": Linv.T.contiguous(),
                    "ymean": gp.outcome_transform.means.reshape(()),
                    "ystd": gp.outcome_transform.stdvs.reshape(()),
                }
        return self._cache

    def screening_device(self) -> torch.device:
        """The device of the float32 pool screening (``settings.device``; 'auto' = cuda if present)."""
        dev = self.settings.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("surrogate device 'cuda' was asked for but torch sees no GPU")
        return torch.device(dev)

    def screening_chunk_size(self, chunk_size: int) -> int:
        """Rows per float32 screening chunk: at least 262144 on the GPU (one host-to-GPU copy
        each; 262144 x 500 float32 cross-covariances are 0.5 GB), ``chunk_size`` on the CPU."""
        return max(chunk_size, 262144) if self.screening_device().type == "cuda" else chunk_size

    def _cache32(self) -> dict:
        """float32 copies of the kernel module, the input scaling and the predictive cache on
        the screening device, for pool screening."""
        cache = self._predictive_cache()
        if "covar32" not in cache:
            import copy

            dev = self.screening_device()
            cache["device"] = dev
            cache["covar32"] = copy.deepcopy(self.model.covar_module).float().to(dev)
            for k in ("Xtr", "alpha", "LinvT", "c"):
                cache[k + "32"] = cache[k].float().to(dev)
            tf = self.model.input_transform  # Normalize: (x - offset) / coefficient
            cache["offset32"] = tf._offset.reshape(-1).float().to(dev)
            cache["coef32"] = tf._coefficient.reshape(-1).float().to(dev)
        return cache

    def predict(self, X: np.ndarray, precision: Literal["float64", "float32"] = "float64") -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent function, each ``m``.

        Streams ``X`` (``m x d``) in chunks of ``settings.chunk_size``. Per chunk only the
        ``chunk x n`` cross-covariance (from the GP's own kernel module) is formed:
        mean = c + k*^T alpha, var = k** - ||L^-1 k*||^2 with the cached Cholesky factor L of
        the training covariance, i.e. the diagonal of gpytorch's exact predictive covariance
        without its lazy-tensor overhead (equal to ``model.posterior`` in the tests).

        Args:
            X: ``m x d`` features.
            precision: ``float32`` halves the time of the two ``chunk x n`` products, with
                absolute errors around 1e-4 of the prior standard deviation: good for ranking
                a large pool, not for final numbers (``select_batch`` re-scores its shortlist
                in float64).
        """
        if self.model is None:
            raise RuntimeError("GPSurrogate.predict called before fit")
        f32 = precision == "float32"
        cache = self._cache32() if f32 else self._predictive_cache()
        sfx = "32" if f32 else ""
        kern = cache["covar32"] if f32 else self.model.covar_module
        gp = self.model
        X = np.asarray(X)
        m = X.shape[0]
        mean = np.empty(m)
        std = np.empty(m)
        cs = self.settings.chunk_size
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if f32:
                cs = self.screening_chunk_size(cs)
            for a in range(0, m, cs):
                if f32:
                    xb = torch.as_tensor(np.asarray(X[a : a + cs], dtype=np.float32)).to(cache["device"])
                    xb = (xb - cache["offset32"]) / cache["coef32"]
                else:
                    xb = gp.input_transform(torch.as_tensor(np.asarray(X[a : a + cs], dtype=float), dtype=_DTYPE))
                Ks = kern(xb, cache["Xtr" + sfx]).to_dense()  # chunk x n
                prior = kern(xb, diag=True)
                mu = cache["c" + sfx] + Ks @ cache["alpha" + sfx]
                v = Ks @ cache["LinvT" + sfx]
                var = (prior - torch.linalg.vector_norm(v, dim=-1) ** 2).clamp_min(1e-12)
                mean[a : a + cs] = (mu.double().cpu() * cache["ystd"] + cache["ymean"]).numpy()
                std[a : a + cs] = (var.double().sqrt().cpu() * cache["ystd"]).numpy()
        return mean, std

    def joint(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Joint posterior of the latent function at ``X`` (``m x d``, keep ``m`` small).

        Returns:
            mean (``m``) and covariance (``m x m``) in the training target's units.
        """
        if self.model is None:
            raise RuntimeError("GPSurrogate.joint called before fit")
        cache = self._predictive_cache()
        gp = self.model
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xb = gp.input_transform(torch.as_tensor(np.asarray(X, dtype=float), dtype=_DTYPE))
            Ks = gp.covar_module(xb, cache["Xtr"]).to_dense()
            V = Ks @ cache["LinvT"]
            cov = gp.covar_module(xb).to_dense() - V @ V.T
            mu = cache["c"] + Ks @ cache["alpha"]
            s2 = cache["ystd"] ** 2
        cov = 0.5 * (cov + cov.T) * s2
        return (mu * cache["ystd"] + cache["ymean"]).numpy(), cov.numpy()

    def loo_predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Leave-one-out predictions of every training label, closed form, with hyperparameters
        that never saw the left-out label.

        Rasmussen & Williams (2006) eq. 5.12 with ``K`` the noisy training covariance over every
        label: ``mu_i = y_i - [K^-1 (y - c)]_i / [K^-1]_ii``, ``sigma_i^2 = 1 / [K^-1]_ii`` (the
        predictive variance of a new measurement). The labels are split at random in two halves;
        the hyperparameters are fitted on one half (at most 100 of its labels) and give the
        LOO predictions of the other half, and vice versa. Why not the fitted model's own
        hyperparameters: they saw every label, and with ARD lengthscales that leak is large
        (measured: on 30 pure-noise labels with 20 features the closed-form LOO rank correlation
        at the full-data hyperparameters was 0.47-0.75 over 3 draws).

        Returns:
            labels, LOO means and LOO standard deviations (``n`` each), in the training
            target's units.
        """
        if self.model is None:
            raise RuntimeError("GPSurrogate.loo_predictions called before fit")
        n = len(self._train[1])
        perm = np.random.default_rng(self.seed + 1).permutation(n)
        halves = (np.sort(perm[: n // 2]), np.sort(perm[n // 2 :]))
        mu, sd = np.full(n, np.nan), np.full(n, np.nan)
        cap = min(self.settings.max_fit_points, 100)  # the two extra fits cost at most ~1/2 of a 300-label fit
        for fit_rows, test_rows in (halves, halves[::-1]):
            if len(fit_rows) < 2 or not len(test_rows):
                continue
            if len(fit_rows) > cap:
                fit_rows = np.sort(np.random.default_rng(self.seed + 2).choice(fit_rows, cap, replace=False))
            m, s = _closed_form_loo(self._fit_on(fit_rows, self.settings.loo_fit_maxiter)[0])
            mu[test_rows], sd[test_rows] = m[test_rows], s[test_rows]
        y = self._train[1].reshape(-1).numpy()
        return y, mu, sd

    def fitted_loo_predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form leave-one-out means and standard deviations of every training label at the
        fitted model's own hyperparameters (R&W eq. 5.12; they saw every label, so this is the
        optimistic LOO of a model fitted on all of them: the attainable ceiling, a likelihood
        comparison of kernels), in the training target's units."""
        if self.model is None:
            raise RuntimeError("GPSurrogate.fitted_loo_predictions called before fit")
        return _closed_form_loo(self.model)

    def noise_variance(self) -> float:
        """Observation noise variance in the training target's units (mean over points)."""
        if self.model is None:
            raise RuntimeError("GPSurrogate.noise_variance called before fit")
        cache = self._predictive_cache()
        with torch.no_grad():
            return float(self.model.likelihood.noise.mean() * cache["ystd"] ** 2)

    def sample_joint(self, X: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """``n_samples x m`` joint posterior samples at ``X`` (``m x d``, keep ``m`` small)."""
        mu, cov = self.joint(X)
        L = _robust_cholesky(cov)
        return mu + rng.standard_normal((n_samples, len(mu))) @ L.T


def _closed_form_loo(gp) -> tuple[np.ndarray, np.ndarray]:
    """LOO means and standard deviations (``n`` each, in the raw target's units) of every training
    label of a fitted botorch ``SingleTaskGP`` at its hyperparameters (R&W eq. 5.12)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xtr, ytr = gp.train_inputs[0], gp.train_targets  # normalised / standardised
        n = len(ytr)
        K = gp.covar_module(Xtr).to_dense() + torch.diag(gp.likelihood.noise.reshape(-1).expand(n))
        L = _torch_cholesky(K)
        Kinv = torch.cholesky_inverse(L)
        kinv_diag = torch.diagonal(Kinv)
        alpha = Kinv @ (ytr - gp.mean_module.constant.reshape(()))
        mu = ytr - alpha / kinv_diag
        sd = kinv_diag.rsqrt()
        s, m = gp.outcome_transform.stdvs.reshape(()), gp.outcome_transform.means.reshape(())
    return (mu * s + m).numpy(), (sd * s).numpy()


def _torch_cholesky(K: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of ``K`` with growing jitter if needed."""
    jitter = 0.0
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(K + jitter * torch.eye(len(K), dtype=K.dtype))
        if int(info) == 0:
            break
        jitter = max(jitter * 10, 1e-8)
    return L


def _robust_cholesky(cov: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of ``cov`` (``m x m``) with growing jitter if needed."""
    jitter = 1e-10 * max(float(np.mean(np.diag(cov))), 1e-12)
    eye = np.eye(len(cov))
    for _ in range(8):
        try:
            return np.linalg.cholesky(cov + jitter * eye)
        except np.linalg.LinAlgError:
            jitter *= 10
    w, V = np.linalg.eigh(cov)
    return V * np.sqrt(np.clip(w, 0, None))


class RandomForestSurrogate:
    """sklearn random forest; the uncertainty is the spread (std) of the per-tree predictions.

    Args:
        settings: the surrogate settings (``n_trees``, ``min_samples_leaf``, ``chunk_size``).
        seed: random_state for the forest (derive it from the campaign's Generator).
        n_jobs: trees fitted and evaluated in parallel (joblib; -1 = every core). The forest is
            the same for any value (one random_state per tree); the agent keeps 1 so that the
            benchmark's concurrent runs do not compete for cores.
    """

    def __init__(self, settings: SurrogateSettings | None = None, seed: int = 0, n_jobs: int = 1):
        self.settings = settings or SurrogateSettings(kind="rf")
        self.seed = int(seed)
        self.n_jobs = int(n_jobs)
        self.model = None

    def fit(self, X: np.ndarray, y: np.ndarray, yvar: np.ndarray | None = None) -> None:
        """Fit on ``X`` (``n x d``) and ``y`` (``n``); ``yvar`` is ignored."""
        from sklearn.ensemble import RandomForestRegressor

        self.model = RandomForestRegressor(
            n_estimators=self.settings.n_trees,
            min_samples_leaf=self.settings.min_samples_leaf,
            random_state=self.seed,
            n_jobs=self.n_jobs,
        )
        self._train = (np.asarray(X, dtype=np.float32), np.asarray(y, dtype=float).reshape(-1))
        self.model.fit(np.asarray(X, dtype=float), self._train[1])

    def loo_predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Out-of-bag predictions of every training label: mean and spread over the trees whose
        bootstrap sample left it out (NaN for a label every tree saw).

        Returns:
            labels, out-of-bag means and standard deviations (``n`` each).
        """
        if self.model is None:
            raise RuntimeError("RandomForestSurrogate used before fit")
        X, y = self._train
        P = self.tree_predictions(X)  # n_trees x n
        oob = np.ones_like(P, dtype=bool)
        for t, rows in enumerate(self.model.estimators_samples_):
            oob[t, rows] = False
        P = np.where(oob, P, np.nan)
        n_oob = oob.sum(axis=0)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(P, axis=0)
            std = np.where(n_oob >= 2, np.nanstd(P, axis=0), np.nan)
        return y, np.where(n_oob > 0, mean, np.nan), std

    def tree_predictions(self, X: np.ndarray) -> np.ndarray:
        """``n_trees x m`` per-tree predictions."""
        if self.model is None:
            raise RuntimeError("RandomForestSurrogate used before fit")
        X = np.asarray(X, dtype=np.float32)
        return np.stack([t.predict(X) for t in self.model.estimators_])

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std across trees, each ``m``, in chunks."""
        X = np.asarray(X)
        m = X.shape[0]
        mean, std = np.empty(m), np.empty(m)
        cs = self.settings.chunk_size
        for a in range(0, m, cs):
            P = self.tree_predictions(X[a : a + cs])
            mean[a : a + cs] = P.mean(axis=0)
            std[a : a + cs] = P.std(axis=0)
        return mean, std


_BUILTIN = ("gp", "rf")


def surrogate_class(kind: str) -> type:
    """The surrogate class registered as ``kind`` under ``matloop.surrogates``.

    Falls back to the built-in ``GPSurrogate`` / ``RandomForestSurrogate`` for ``gp`` / ``rf``
    when the installed metadata does not list them (an editable install older than the
    entry points).

    Raises:
        RegistryError: no such kind.
    """
    if kind not in registry.names("matloop.surrogates"):
        if kind == "gp":
            return GPSurrogate
        if kind == "rf":
            return RandomForestSurrogate
    return registry.load("matloop.surrogates", kind)


def make_surrogate(
    settings: SurrogateSettings | None = None,
    *,
    rng: np.random.Generator | None = None,
    bounds: np.ndarray | None = None,
    n_fraction_columns: int = 0,
):
    """Build the surrogate that ``settings.kind`` names (``cls(settings, seed=seed)``).

    Args:
        settings: the surrogate settings (default: GP).
        rng: source of the seed (forest, GP fitting subset); None uses seed 0.
        bounds: ``2 x d`` feature bounds for the GP's input normalisation (passed to
            classes with ``takes_pool_bounds``).
        n_fraction_columns: trailing element-fraction columns of the features, for
            ``kernel_structure='additive_fractions'`` (see ``GPSurrogate``).
    """
    settings = settings or SurrogateSettings()
    seed = int(rng.integers(2**31 - 1)) if rng is not None else 0
    cls = surrogate_class(settings.kind)
    if getattr(cls, "takes_pool_bounds", False):
        return cls(settings, bounds=bounds, seed=seed, n_fraction_columns=n_fraction_columns)
    return cls(settings, seed=seed)


__all__ = [
    "SurrogateSettings",
    "PcaView",
    "fit_pca",
    "GPSurrogate",
    "RandomForestSurrogate",
    "make_surrogate",
    "surrogate_class",
]
