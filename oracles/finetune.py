"""Learn-on-the-fly (LOTF) fine-tuning of CHGNet on frames where two potentials disagree.

The seed's LOTF-MD: during MD, frames on which the potential is uncertain are labelled with a
reference method and the potential is fine-tuned on them. Here

* uncertainty is the disagreement of two ML potentials (CHGNet and, by default, SevenNet):
  the largest per-atom force difference (``force_disagreement``); frames above
  ``disagreement_ev_per_a`` are selected (``select_uncertain``, at most ``max_frames``);
* the selected frames are labelled by GPAW PBE single points (``gpaw_single_point``, small
  plane-wave settings) or, for a cheap check, by the partner potential (``label: partner``);
* CHGNet is fine-tuned on them with its own ``chgnet.trainer.Trainer`` (energies and forces,
  a few epochs; ``finetune_chgnet``); the weights are cached per chemistry under
  ``<cache>/chgnet-finetune/<chemical system>/<key>.pth.tar``, ``key`` hashing the base model,
  the training settings and the labelled frames, and the fine-tuned model's version
  (``<base>-ft-<key>``) is what an oracle using it records.

What is implemented: selection, labelling, fine-tuning and the cache. Wiring it into the
``mlip-md`` run (continuing the MD with the fine-tuned model) is not done yet.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matloop.core.records import OracleError, stable_hash


class FinetuneSettings(BaseModel):
    """On-the-fly fine-tuning: when a frame is uncertain, how it is labelled, how CHGNet is trained."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="fine-tune CHGNet on uncertain MD frames")
    partner_model: str = Field("sevennet", description="second potential whose force disagreement flags a frame")
    disagreement_ev_per_a: float = Field(
        0.3, gt=0, description="largest per-atom force difference (eV/A) above which a frame is labelled"
    )
    max_frames: int = Field(8, ge=1, description="frames labelled per fine-tuning round")
    label: Literal["gpaw-pbe", "partner"] = Field(
        "gpaw-pbe", description="reference of the labels: GPAW PBE single points, or the partner potential"
    )
    gpaw_ecut_ev: float = Field(300.0, gt=0, description="plane-wave cutoff of the GPAW labels (eV)")
    gpaw_kpt_density: float = Field(2.0, gt=0, description="k-point density of the GPAW labels (per A^-1)")
    epochs: int = Field(5, ge=1, description="training epochs per fine-tuning round")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate")
    seed: int = Field(0, description="torch and data-split seed of the training")


def force_disagreement(atoms, calc_a, calc_b) -> float:
    """Largest per-atom force difference (eV/A) between two calculators on ``atoms``."""
    a, b = atoms.copy(), atoms.copy()
    a.calc, b.calc = calc_a, calc_b
    return float(np.linalg.norm(a.get_forces() - b.get_forces(), axis=1).max())


def select_uncertain(frames, calc_a, calc_b, threshold_ev_per_a: float, max_frames: int) -> list[tuple[int, float]]:
    """``(index, disagreement)`` of the frames above the threshold, most uncertain first, at most ``max_frames``."""
    scored = [(i, force_disagreement(f, calc_a, calc_b)) for i, f in enumerate(frames)]
    return sorted((x for x in scored if x[1] > threshold_ev_per_a), key=lambda x: -x[1])[:max_frames]


def gpaw_single_point(atoms, ecut_ev: float, kpt_density: float, log: str = "-") -> tuple[float, np.ndarray]:
    """PBE energy (eV) and forces (eV/A) of ``atoms`` with GPAW in plane-wave mode."""
    from ase.calculators.calculator import kptdensity2monkhorstpack

    from .gpaw import import_gpaw

    import_gpaw()
    from gpaw import GPAW, PW

    a = atoms.copy()
    kpts = tuple(int(k) for k in kptdensity2monkhorstpack(a, kpt_density, even=False))
    a.calc = GPAW(mode=PW(ecut_ev), xc="PBE", kpts=kpts, txt=log)
    return float(a.get_potential_energy()), np.asarray(a.get_forces())


def finetune_chgnet(
    base_version: str,
    frames,
    energies_ev: list[float],
    forces_ev_per_a: list[np.ndarray],
    s: FinetuneSettings,
    cache_dir: Path,
    device: str = "cpu",
):
    """CHGNet ``base_version`` fine-tuned on labelled frames, from the cache when trained before.

    Args:
        frames: ``ase.Atoms`` of the labelled frames (at least two: one is held out for validation).
        energies_ev: their total energies; forces_ev_per_a: their forces.
        cache_dir: folder of the fine-tuned weights (``<cache_dir>/<chemical system>/``).

    Returns:
        ``(model, record)``: the fine-tuned ``CHGNet`` and ``{"version", "weights", "cached",
        "n_frames", "epochs", "chemical_system"}``.
    """
    import torch
    from chgnet.data.dataset import StructureData, get_train_val_test_loader
    from chgnet.model import CHGNet
    from chgnet.trainer import Trainer

    from .mlip import atoms_to_structure

    if len(frames) < 2:
        raise OracleError("fine-tuning needs at least two labelled frames")
    structures = [atoms_to_structure(f) for f in frames]
    chemsys = "-".join(sorted({str(el) for st in structures for el in st.composition.elements}))
    data_key = [
        [np.round(f.positions, 4).tolist(), np.round(f.cell.array, 4).tolist(), f.get_chemical_symbols(),
         round(e, 5), np.round(g, 4).tolist()]
        for f, e, g in zip(frames, energies_ev, forces_ev_per_a, strict=True)
    ]
    key = stable_hash([base_version, s.model_dump(mode="json"), data_key], 12)
    path = Path(cache_dir) / chemsys / f"{key}.pth.tar"
    record = {"version": f"{base_version}-ft-{key}", "weights": str(path), "n_frames": len(frames),
              "epochs": s.epochs, "chemical_system": chemsys}
    quiet = io.StringIO()
    if path.exists():
        with contextlib.redirect_stdout(quiet):
            model = CHGNet.from_file(str(path), use_device=device, verbose=False)
        return model, {**record, "cached": True}

    with contextlib.redirect_stdout(quiet), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CHGNet.load(model_name=base_version, use_device=device, verbose=False)
        data = StructureData(
            structures,
            [e / len(f) for e, f in zip(energies_ev, frames, strict=True)],  # CHGNet trains on eV/atom
            [np.asarray(g).tolist() for g in forces_ev_per_a],
            shuffle=True,
        )
        n_val = max(1, len(frames) // 4)
        train, val, _ = get_train_val_test_loader(
            data, batch_size=min(4, len(frames) - n_val), train_ratio=1 - n_val / len(frames),
            val_ratio=n_val / len(frames), return_test=True, pin_memory=False,
        )
        trainer = Trainer(model=model, targets="ef", optimizer="Adam", scheduler="CosLR", criterion="MSE",
                          epochs=s.epochs, learning_rate=s.learning_rate, use_device=device,
                          torch_seed=s.seed, data_seed=s.seed, print_freq=10**6)
        with tempfile.TemporaryDirectory() as tmp:
            trainer.train(train, val, save_dir=tmp)
        model = trainer.model
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.as_dict()}, path)
    return model, {**record, "cached": False}
