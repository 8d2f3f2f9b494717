"""Generative candidates from a variational autoencoder over small crystal cells (iMatGen-style).

A crystal of at most ``max_atoms`` sites is written as one fixed-length vector that decodes
back to a structure (``CellEncoding``): the Niggli cell's lattice parameters (log lengths,
angles), then one slot per site holding a one-hot element over the campaign's elements
(plus "empty") and the fractional coordinates as (sin, cos) pairs. Sites are put in a
canonical order (electronegativity, atomic number, coordinates) after translating the first
one to the origin. A torch VAE learns that vector for the campaign's known structures; a
property head predicts fitness from the latent mean so that the latent space is organised
by the objective (Noh et al., Matter 2019). New candidates are decoded from Gaussian points
around the latent means of the fittest known candidates, validated, deduplicated and,
optionally, pre-relaxed with the MLIP tier.

``rediscovery`` is iMatGen's test: hold structures out of training and count how many of
them the model generates.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matloop.core.records import Candidate, Request, stable_hash

from matloop.core.protocols import CampaignState
from .validity import Deduplicator, MatcherSettings, ValidityFilter, ValiditySettings, sample_quality

__all__ = ["CellEncoding", "VaeGenerator", "VaeSettings", "rediscovery", "sample_quality"]


class VaeSettings(BaseModel):
    """Settings of ``VaeGenerator``."""

    model_config = ConfigDict(extra="forbid")

    max_atoms: int = Field(
        8, ge=1, le=64, description="sites per cell the representation holds; larger structures are not used"
    )
    max_training_structures: int | None = Field(
        2000, ge=2, description="train on at most this many structures: the labelled ones (fittest first), then random others"
    )
    latent_dim: int = Field(16, ge=2, description="dimension of the latent space")
    hidden: int = Field(256, ge=8, description="width of the hidden layers")
    epochs: int = Field(300, ge=1, description="training epochs")
    batch_size: int = Field(64, ge=1, description="minibatch size")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate")
    beta_kl: float = Field(0.1, ge=0, description="weight of the KL term")
    property_weight: float = Field(1.0, ge=0, description="weight of the fitness-prediction loss (0: no property head)")
    sample_from: Literal["best", "training", "prior"] = Field(
        "best",
        description="best: around the latents of the fittest known structures; training: around random "
        "training structures; prior: from N(0, I)",
    )
    n_best: int = Field(10, ge=1, description="how many of the fittest structures anchor the sampling")
    sample_sigma: float = Field(1.0, gt=0, description="standard deviation of the Gaussian around an anchor latent")
    oversample: int = Field(
        2, ge=1, description="collect this many times n novel candidates, then keep the n with the best predicted fitness"
    )
    max_attempts_per_candidate: int = Field(50, ge=1, description="decodings allowed per requested candidate")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU")
    torch_threads: int | None = Field(
        1, ge=1,
        description="torch CPU threads while training and decoding (restored afterwards); a small MLP is fastest "
        "on one thread, and more threads oversubscribe shared machines. None: leave torch's setting",
    )
    prerelax: bool = Field(
        False, description="relax decoded structures with the registered mlip oracle before returning them"
    )
    prerelax_settings: dict = Field(
        default_factory=lambda: {"fmax": 0.1, "max_steps": 100},
        description="settings of the mlip oracle that pre-relaxes (fmax, max_steps, relax_cell, model, "
        "model_version, ...); formation_energy is off unless set; it runs on this generator's device and threads",
    )
    validity: ValiditySettings = Field(default_factory=ValiditySettings, description="validity filter")
    matcher: MatcherSettings = Field(default_factory=MatcherSettings, description="duplicate criterion")


# -- representation ------------------------------------------------------------------------
def _electronegativity(symbol: str) -> float:
    from pymatgen.core import Element

    x = Element(symbol).X
    return float(x) if x == x else 4.0  # noble gases have no Pauling value: put them last


class CellEncoding:
    """Invertible fixed-length vector for cells of at most ``max_atoms`` sites.

    Layout (length ``6 + max_atoms * (n_elements + 1) + max_atoms * 6``): ``log a, log b,
    log c, alpha/90, beta/90, gamma/90``; per slot a one-hot over ``elements`` + empty; per
    slot ``sin 2πx, cos 2πx, sin 2πy, cos 2πy, sin 2πz, cos 2πz``.

    Args:
        elements: the element symbols the one-hot covers.
        max_atoms: number of site slots.
    """

    def __init__(self, elements: list[str], max_atoms: int):
        self.elements = sorted(set(elements), key=lambda e: (_electronegativity(e), e))
        self.index = {e: i for i, e in enumerate(self.elements)}
        self.max_atoms = max_atoms
        self.n_classes = len(self.elements) + 1  # last class: empty slot

    @property
    def dim(self) -> int:
        """Length of the encoded vector: ``6 + max_atoms * (n_elements + 1) + max_atoms * 6``."""
        return 6 + self.max_atoms * self.n_classes + self.max_atoms * 6

    @property
    def species_slice(self) -> slice:
        """Slice of the vector holding the per-slot species one-hots (empty slot last)."""
        return slice(6, 6 + self.max_atoms * self.n_classes)

    @property
    def coords_slice(self) -> slice:
        """Slice of the vector holding the per-slot sin/cos fractional coordinates."""
        return slice(6 + self.max_atoms * self.n_classes, self.dim)

    def fits(self, structure) -> bool:
        """True if ``structure`` is ordered, has at most ``max_atoms`` sites, and only covered elements."""
        return (
            structure.is_ordered
            and len(structure) <= self.max_atoms
            and all(el.symbol in self.index for el in structure.composition.elements)
        )

    def canonical(self, structure):
        """Niggli cell, sites ordered by (electronegativity, Z), first site at the origin, then by coordinates."""
        from pymatgen.core import Structure

        s = structure.get_reduced_structure()
        key = [(_electronegativity(site.specie.symbol), site.specie.Z) for site in s]
        first = min(range(len(s)), key=lambda i: (key[i], tuple(np.round(s.frac_coords[i] % 1.0, 4))))
        f = (s.frac_coords - s.frac_coords[first]) % 1.0
        f[np.isclose(f, 1.0, atol=1e-6)] = 0.0
        order = sorted(range(len(s)), key=lambda i: (key[i], tuple(np.round(f[i], 4))))
        return Structure(s.lattice, [s[i].specie for i in order], f[order])

    def encode(self, structure) -> np.ndarray:
        """The vector of one structure (must satisfy ``fits``)."""
        if not self.fits(structure):
            raise ValueError(f"{structure.composition.reduced_formula} ({len(structure)} sites) does not fit the encoding")
        s = self.canonical(structure)
        x = np.zeros(self.dim, dtype=np.float32)
        a, b, c, al, be, ga = s.lattice.parameters
        x[:6] = [math.log(a), math.log(b), math.log(c), al / 90, be / 90, ga / 90]
        onehot = np.zeros((self.max_atoms, self.n_classes), dtype=np.float32)
        onehot[:, -1] = 1.0
        coords = np.zeros((self.max_atoms, 6), dtype=np.float32)
        for k, site in enumerate(s):
            onehot[k, -1] = 0.0
            onehot[k, self.index[site.specie.symbol]] = 1.0
            ang = 2 * np.pi * s.frac_coords[k]
            coords[k] = np.stack([np.sin(ang), np.cos(ang)], axis=1).ravel()
        x[self.species_slice] = onehot.ravel()
        x[self.coords_slice] = coords.ravel()
        return x

    def decode(self, x: np.ndarray):
        """The structure of one vector (element = argmax per slot), or None if it is empty or has no cell."""
        from pymatgen.core import Lattice, Structure

        x = np.asarray(x, dtype=float)
        lengths = np.exp(np.clip(x[:3], -3, 5))
        angles = np.clip(x[3:6] * 90, 20, 160)
        try:
            lattice = Lattice.from_parameters(*lengths, *angles)
            if not lattice.volume > 1e-3:
                return None
        except Exception:  # angles that close no cell
            return None
        cls = x[self.species_slice].reshape(self.max_atoms, self.n_classes).argmax(axis=1)
        sc = x[self.coords_slice].reshape(self.max_atoms, 3, 2)
        frac = (np.arctan2(sc[..., 0], sc[..., 1]) / (2 * np.pi)) % 1.0
        keep = [k for k in range(self.max_atoms) if cls[k] < len(self.elements)]
        if not keep:
            return None
        return Structure(lattice, [self.elements[cls[k]] for k in keep], frac[keep])


# -- model ---------------------------------------------------------------------------------
def _build_model(dim: int, settings: VaeSettings, n_slots: int, n_classes: int):
    import torch
    from torch import nn

    h, z = settings.hidden, settings.latent_dim

    class CrystalVae(nn.Module):
        """MLP VAE with a property head on the latent mean."""

        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
            self.mu = nn.Linear(h, z)
            self.logvar = nn.Linear(h, z)
            self.decoder = nn.Sequential(nn.Linear(z, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, dim))
            self.prop = nn.Sequential(nn.Linear(z, max(8, h // 4)), nn.ReLU(), nn.Linear(max(8, h // 4), 1))

        def encode(self, x):
            e = self.encoder(x)
            return self.mu(e), self.logvar(e).clamp(-10, 10)

        def decode(self, zz):
            return self.decoder(zz)

        def forward(self, x, noise):
            mu, logvar = self.encode(x)
            zz = mu + noise * torch.exp(0.5 * logvar)
            return self.decode(zz), mu, logvar, self.prop(mu).squeeze(-1)

    model = CrystalVae()
    model.n_slots, model.n_classes = n_slots, n_classes
    return model


def _init_weights(model, g) -> None:
    """Re-initialise every Linear layer from ``g`` (torch's default init draws from the global RNG)."""
    import torch
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
            bound = 1 / math.sqrt(m.weight.shape[1])
            with torch.no_grad():
                nn.init.uniform_(m.bias, -bound, bound, generator=g)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run a block with ``n`` torch CPU threads, then restore the previous count."""
    import torch

    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class VaeGenerator:
    """Candidates decoded from a VAE trained on the campaign's known small structures.

    Args:
        name: the campaign's name for this generator (becomes ``Candidate.source``).
        settings: dict validated against ``VaeSettings``.

    Attributes:
        stats: counts of ``attempted`` decodings, ``valid``, ``unique`` and ``novel`` ones (and
            ``relax_rejected``: novel samples lost in pre-relaxation).
        history: per training, the number of structures, epochs, final losses and seconds.
    """

    Settings: ClassVar[type[VaeSettings]] = VaeSettings

    def __init__(self, name: str = "vae", settings: dict | None = None, base_dir=None):
        del base_dir  # no path settings; accepted as every generator's constructor is
        self.name = name
        self.settings = settings if isinstance(settings, VaeSettings) else VaeSettings(**(settings or {}))
        self.validity = ValidityFilter(self.settings.validity)
        self.stats: Counter = Counter()
        self.history: list[dict] = []
        self.encoding: CellEncoding | None = None
        self.model = None
        self._trained_on: str | None = None
        self._known = Deduplicator(matcher=self.settings.matcher)
        self._structures: dict = {}  # candidate id -> pymatgen Structure, parsed once
        self.relaxer = self._prerelax_oracle() if self.settings.prerelax else None

    # -- training ------------------------------------------------------------------------------
    def fit(self, structures: list, fitness: list[float | None] | None = None, seed: int = 0) -> None:
        """Train on ``structures`` (those that fit ``max_atoms``); ``fitness`` may hold None for unknown.

        Deterministic for a given ``seed`` on CPU (all randomness from one ``torch.Generator``).
        """
        with _torch_threads(self.settings.torch_threads):
            self._fit(structures, fitness, seed)

    def _fit(self, structures: list, fitness: list[float | None] | None, seed: int) -> None:
        import torch

        s = self.settings
        elements = sorted({el.symbol for st in structures for el in st.composition.elements})
        enc = CellEncoding(elements, s.max_atoms)
        rows = [(st, f) for st, f in zip(structures, fitness or [None] * len(structures)) if enc.fits(st)]
        if len(rows) < 2:
            raise ValueError(f"need at least 2 structures with <= {s.max_atoms} ordered sites to train, got {len(rows)}")
        X = np.stack([enc.encode(st) for st, _ in rows])
        y = np.array([np.nan if f is None else float(f) for _, f in rows], dtype=np.float32)
        device = _resolve_device(s.device)
        g = torch.Generator().manual_seed(int(seed))
        model = _build_model(enc.dim, s, enc.max_atoms, enc.n_classes)
        _init_weights(model, g)
        model.to(device)

        lat_mean, lat_std = X[:, :6].mean(0), X[:, :6].std(0) + 1e-3
        Xn = X.copy()
        Xn[:, :6] = (X[:, :6] - lat_mean) / lat_std
        has_y = np.isfinite(y)
        y_mean = float(y[has_y].mean()) if has_y.any() else 0.0
        y_std = float(y[has_y].std()) + 1e-6 if has_y.sum() > 1 else 1.0
        yn = np.where(has_y, (y - y_mean) / y_std, 0.0).astype(np.float32)

        Xt = torch.tensor(Xn, device=device)
        yt = torch.tensor(yn, device=device)
        mt = torch.tensor(has_y.astype(np.float32), device=device)
        opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate)
        n = len(Xt)
        t0 = time.perf_counter()
        model.train()
        for _ in range(s.epochs):
            perm = torch.randperm(n, generator=g).to(device)
            tot = {"loss": 0.0, "lattice": 0.0, "species": 0.0, "coords": 0.0, "kl": 0.0, "property": 0.0}
            for start in range(0, n, s.batch_size):
                idx = perm[start : start + s.batch_size]
                noise = torch.randn((len(idx), s.latent_dim), generator=g).to(device)
                parts = self._losses(model, enc, Xt[idx], yt[idx], mt[idx], noise)
                loss = (
                    parts["lattice"] + parts["species"] + parts["coords"]
                    + s.beta_kl * parts["kl"] + s.property_weight * parts["property"]
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                for k, v in parts.items():
                    tot[k] += v.item() * len(idx) / n
                tot["loss"] += loss.item() * len(idx) / n
        model.eval()
        self.encoding, self.model = enc, model
        self._device = device
        self._lat = (lat_mean, lat_std)
        self._y = (y_mean, y_std, bool(has_y.sum() > 1 and s.property_weight > 0))
        self._train_X = Xn
        self.history.append({"n_structures": n, "epochs": s.epochs, "seconds": time.perf_counter() - t0,
                             "device": device, **{k: round(v, 5) for k, v in tot.items()}})

    @staticmethod
    def _losses(model, enc: CellEncoding, x, y, mask, noise) -> dict:
        import torch.nn.functional as F

        recon, mu, logvar, pred = model(x, noise)
        n_slots, n_cls = enc.max_atoms, enc.n_classes
        lattice = F.mse_loss(recon[:, :6], x[:, :6])
        logits = recon[:, enc.species_slice].reshape(-1, n_slots, n_cls)
        target = x[:, enc.species_slice].reshape(-1, n_slots, n_cls).argmax(-1)
        species = F.cross_entropy(logits.reshape(-1, n_cls), target.reshape(-1)) * n_slots
        occupied = (target < n_cls - 1).float().unsqueeze(-1)
        dc = (recon[:, enc.coords_slice] - x[:, enc.coords_slice]).reshape(-1, n_slots, 6)
        coords = ((dc**2) * occupied).sum(dim=(1, 2)).mean()
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)).mean()
        prop = ((pred - y) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)
        return {"lattice": lattice, "species": species, "coords": coords, "kl": kl, "property": prop}

    # -- latent space --------------------------------------------------------------------------
    def latents(self, structures: list) -> np.ndarray:
        """Latent means (``n x latent_dim``) of structures that fit the encoding."""
        import torch

        X = np.stack([self.encoding.encode(st) for st in structures]).astype(np.float32)
        X[:, :6] = (X[:, :6] - self._lat[0]) / self._lat[1]
        with torch.no_grad(), _torch_threads(self.settings.torch_threads):
            mu, _ = self.model.encode(torch.tensor(X, device=self._device))
        return mu.cpu().numpy()

    def decode(self, z: np.ndarray) -> tuple[list, np.ndarray]:
        """Structures (None where decoding fails) and predicted fitness for latent points ``z`` (``m x latent_dim``)."""
        import torch

        with torch.no_grad(), _torch_threads(self.settings.torch_threads):
            zt = torch.tensor(np.asarray(z, dtype=np.float32), device=self._device)
            out = self.model.decode(zt).cpu().numpy()
            pred = self.model.prop(zt).squeeze(-1).cpu().numpy()
        y_mean, y_std, _ = self._y
        out[:, :6] = out[:, :6] * self._lat[1] + self._lat[0]
        return [self.encoding.decode(row) for row in out], pred * y_std + y_mean

    def sample_latents(
        self, m: int, rng: np.random.Generator, anchors: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``m`` latent points around rows of ``anchors`` (or from the prior) and the anchor index of each (-1: prior)."""
        d = self.settings.latent_dim
        if anchors is None or len(anchors) == 0:
            return rng.standard_normal((m, d)), np.full(m, -1)
        which = rng.integers(len(anchors), size=m)
        return anchors[which] + self.settings.sample_sigma * rng.standard_normal((m, d)), which

    def sample(self, m: int, rng: np.random.Generator, around: list | None = None) -> list:
        """``m`` raw decoded structures (None for failed decodings), around ``around`` structures or from the prior."""
        anchors = self.latents(around) if around else None
        z, _ = self.sample_latents(m, rng, anchors)
        return self.decode(z)[0]

    # -- the Generator contract ------------------------------------------------------------------
    def _train_from_state(self, state: CampaignState, rng: np.random.Generator) -> list[Candidate]:
        """(Re)train when the campaign's structures or fitness changed; the training candidates."""
        s = self.settings
        keep = []
        for c in state.candidates.values():
            if c.structure is None:
                continue
            if c.id not in self._structures:
                self._structures[c.id] = c.pmg_structure()
            st = self._structures[c.id]
            if st.is_ordered and len(st) <= s.max_atoms:
                keep.append(c)
        seed = int(rng.integers(2**62))  # drawn every call so the rng stream does not depend on caching
        if s.max_training_structures is not None and len(keep) > s.max_training_structures:
            # the labelled ones first (fittest first), then a random share of the rest
            labelled = sorted((c for c in keep if c.id in state.fitness), key=lambda c: -state.fitness[c.id])
            rest = [c for c in keep if c.id not in state.fitness]
            order = np.random.default_rng(seed).permutation(len(rest))
            keep = (labelled + [rest[i] for i in order])[: s.max_training_structures]
        fit = [state.fitness.get(c.id) for c in keep]
        key = stable_hash([[c.id for c in keep], fit])
        if key != self._trained_on and len(keep) >= 2:
            self.fit([self._structures[c.id] for c in keep], fit, seed=seed)
            self._trained_on = key
            self._train_cands = keep
            self._train_structs = [self._structures[c.id] for c in keep]
        return keep if key == self._trained_on else []

    def generate(self, n: int, state: CampaignState, rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` valid decoded structures new to the campaign, with anchor id and latent point."""
        s = self.settings
        train = self._train_from_state(state, rng)
        if n <= 0 or not train:
            return []
        structs = self._train_structs
        if s.sample_from == "prior":
            anchor_cands, anchors = [], None
        else:
            if s.sample_from == "best" and any(c.id in state.fitness for c in train):
                ranked = sorted((c for c in train if c.id in state.fitness), key=lambda c: -state.fitness[c.id])
                anchor_cands = ranked[: s.n_best]
            else:
                pick = rng.choice(len(train), size=min(s.n_best, len(train)), replace=False)
                anchor_cands = [train[int(i)] for i in pick]
            pos = {c.id: i for i, c in enumerate(train)}
            anchors = self.latents([structs[pos[c.id]] for c in anchor_cands])
        self._known.remember(state.candidates)
        known = self._known
        batch = Deduplicator(matcher=s.matcher)
        relaxed = Deduplicator(matcher=s.matcher)  # two samples may relax into one structure
        want = n * s.oversample
        found: list[tuple[float, Candidate]] = []
        budget = n * s.max_attempts_per_candidate
        while len(found) < want and budget > 0:
            m = min(budget, max(16, 2 * want))
            budget -= m
            z, which = self.sample_latents(m, rng, anchors)
            decoded, pred = self.decode(z)
            for k, st in enumerate(decoded):
                self.stats["attempted"] += 1
                if st is None or not self.validity.check(st)[0]:
                    continue
                self.stats["valid"] += 1
                if not batch.add(st):
                    continue
                self.stats["unique"] += 1
                if not known.is_novel(st):
                    continue
                if s.prerelax:  # only novel samples are worth a relaxation; check them again after it
                    st = self._prerelax(st)
                    if st is None or not self.validity.check(st)[0] or not known.is_novel(st) or not relaxed.add(st):
                        self.stats["relax_rejected"] += 1
                        continue
                prov = {
                    "operator": "vae_sample" + ("+prerelax" if s.prerelax else ""),
                    "parents": [anchor_cands[which[k]].id] if which[k] >= 0 else [],
                    "latent": [round(float(v), 4) for v in z[k]],
                }
                if self._y[2]:
                    prov["predicted_fitness"] = round(float(pred[k]), 5)
                cand = Candidate.from_structure(st, source=self.name, provenance=prov)
                if cand.id in state.candidates or any(cand.id == c.id for _, c in found):
                    continue
                self.stats["novel"] += 1
                found.append((float(pred[k]) if self._y[2] else 0.0, cand))
                if len(found) >= want:
                    break
        if self._y[2]:
            found.sort(key=lambda t: -t[0])
        return [c for _, c in found[:n]]

    def _prerelax_oracle(self):
        """The registered ``mlip`` oracle that pre-relaxes, built through the oracle contract."""
        import torch

        from matloop.core.registry import oracle_class

        s = self.settings
        site = {"device": s.device, "torch_threads": s.torch_threads or torch.get_num_threads()}
        settings = {"formation_energy": False, **s.prerelax_settings}
        return oracle_class("mlip")(name=f"{self.name}-prerelax", settings=settings, site=site)

    def _prerelax(self, structure):
        """``structure`` relaxed by the mlip oracle (its ``relaxed_structure``); None when that fails."""
        from pymatgen.core import Structure

        cand = Candidate.from_structure(structure, source=self.name)
        obs = self.relaxer.run(Request(Request.make_id(cand.id, self.relaxer.name, 0), cand, self.relaxer.name, 0))
        # a failed relaxation (exploding, overlapping atoms) is a rejected sample, not a crash
        return Structure.from_dict(obs.extra["relaxed_structure"]) if obs.ok else None


def rediscovery(structures: list, holdout_fraction: float, n_samples: int, rng: np.random.Generator,
                settings: dict | None = None) -> dict:
    """iMatGen's rediscovery test: train without a held-out set, sample, count held-out structures regenerated.

    Samples are drawn around the latent means of random training structures (``sample_sigma``
    of the settings). A held-out structure counts as rediscovered when a valid sample matches
    it (pymatgen ``StructureMatcher``).

    Returns:
        ``{"n_train", "n_heldout", "n_heldout_reachable", "n_rediscovered", "rate", "n_samples",
        "validity", "uniqueness", "novelty", "train_seconds"}``; ``rate`` is n_rediscovered /
        n_heldout, ``n_heldout_reachable`` counts held-out structures whose elements all occur
        in training (the others cannot be generated).
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    gen = VaeGenerator("vae", {**(settings or {}), "sample_from": "training"})
    s = gen.settings
    usable = [st for st in structures if st.is_ordered and len(st) <= s.max_atoms]
    if len(usable) < 3:
        raise ValueError(f"need at least 3 ordered structures with <= {s.max_atoms} sites, got {len(usable)}")
    order = rng.permutation(len(usable))
    k = max(1, int(round(holdout_fraction * len(usable))))
    held = [usable[i] for i in order[:k]]
    train = [usable[i] for i in order[k:]]
    gen.fit(train, seed=int(rng.integers(2**62)))
    train_elements = set(gen.encoding.elements)
    reachable = sum(1 for h in held if {e.symbol for e in h.composition.elements} <= train_elements)
    anchors = gen.latents(train)
    z, _ = gen.sample_latents(n_samples, rng, anchors)
    samples, _ = gen.decode(z)
    valid = [st for st in samples if st is not None and gen.validity.check(st)[0]]
    pool = Deduplicator(matcher=s.matcher)
    unique = [st for st in valid if pool.add(st)]
    known = Deduplicator(train, matcher=s.matcher)
    n_novel = sum(1 for st in unique if known.is_novel(st))
    found = sum(1 for h in held if not pool.is_novel(h))
    return {
        "n_train": len(train),
        "n_heldout": len(held),
        "n_heldout_reachable": reachable,
        "n_rediscovered": found,
        "rate": found / len(held),
        "n_samples": n_samples,
        "validity": round(len(valid) / n_samples, 4) if n_samples else 0.0,
        "uniqueness": round(len(unique) / len(valid), 4) if valid else 0.0,
        "novelty": round(n_novel / len(unique), 4) if unique else 0.0,
        "train_seconds": round(gen.history[-1]["seconds"], 2),
    }
