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

Before training, the labels' energies are shifted by their mean offset from CHGNet's on the
same frames (``align_energies``): the frames of one MD run share a composition, so only energy
differences between them carry information, and the offset between two codes' energy zeros
(GPAW PBE's atomic references against CHGNet's MP2020-corrected VASP scale, several eV/atom)
would otherwise dominate the loss of a few epochs.

``finetune_round`` is one such round on the frames of an MD run (select, label, align, train,
force error on the labelled frames before and after); the ``mlip-md`` oracle runs it with its
``finetune`` setting after equilibration and runs production with the fine-tuned model
(``matloop.oracles.mlip.chgnet_calculator``): see ``matloop.oracles.md``.
"""

from __future__ import annotations

import contextlib
import io
import random
import tempfile
import time
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
        0.3, ge=0,
        description="largest per-atom force difference (eV/A) above which a frame is labelled (0: any frame)",
    )
    max_frames: int = Field(8, ge=1, description="frames labelled per fine-tuning round")
    snapshot_every_steps: int = Field(
        20, ge=1, description="stride (MD steps) of the equilibration snapshots scored for disagreement"
    )
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

    # CHGNet shuffles and splits the data with the global ``random`` before its Trainer seeds it (and the
    # Trainer never seeds it for data_seed 0): seeded here, restored after, so a key always means one training
    random_state = random.getstate()
    random.seed(s.seed)
    try:
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
    finally:
        random.setstate(random_state)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.as_dict()}, path)
    return model, {**record, "cached": False}


def align_energies(label_energies_ev, model_energies_ev) -> tuple[list[float], float]:
    """Labels shifted by their mean offset from the model's energies of the same frames.

    For frames of one composition only the energy differences between them are physics; the
    constant offset between two codes' energy zeros is removed so that training does not spend
    itself on it. Returns ``(shifted labels, offset)`` with ``offset = mean(label - model)`` (eV
    per frame).

    Measured reason (6-atom Li2O, 4 rattled frames labelled by GPAW PBE at 250 eV, 2 held out;
    offset 4.5 eV/atom): held-out force MAE of pretrained CHGNet 0.130 eV/A; fine-tuned on raw
    labels 0.129 (5 epochs, lr 1e-4) / 0.127 (2 epochs, lr 1e-3), on aligned labels 0.125 / 0.107.
    """
    labels = np.asarray(label_energies_ev, dtype=float)
    offset = float(np.mean(labels - np.asarray(model_energies_ev, dtype=float)))
    return (labels - offset).tolist(), offset


def force_mae(frames, calc, forces_ev_per_a) -> float:
    """Mean absolute force-component error (eV/A) of ``calc`` against reference forces on ``frames``."""
    errors = []
    for f, ref in zip(frames, forces_ev_per_a, strict=True):
        a = f.copy()
        a.calc = calc
        errors.append(np.abs(a.get_forces() - np.asarray(ref)).mean())
    return float(np.mean(errors))


def finetune_round(frames, calc, partner_calc, s: FinetuneSettings, base_version: str, cache_dir: Path,
                   device: str = "cpu", log_dir: Path | None = None):
    """One LOTF round on MD frames: select the uncertain ones, label them, fine-tune CHGNet ``base_version``.

    Args:
        frames: ``ase.Atoms`` snapshots (``info`` may hold ``temperature_k`` and ``step``, recorded).
        calc: the pretrained CHGNet calculator the frames came from; partner_calc: the partner potential.
        cache_dir: folder of the fine-tuned weights (``finetune_chgnet``).
        log_dir: folder for the GPAW text logs (None: no logs).

    Returns:
        ``(calculator, record)``: an ASE calculator of the fine-tuned CHGNet (``mlip.chgnet_calculator``, no stress),
        or None when fewer than two frames are above the threshold (``record["skipped"]`` says so), and the JSON record of the round:
        frames considered, the labelled frames with their disagreements, the label source, the
        energy offset removed (``align_energies``), the force MAE of CHGNet on the labelled frames
        before and after (in-sample: the frames it was trained on, one held out for validation),
        the fine-tuned version, whether the weights came from the cache, and the wall seconds
        of selection, labelling and training.
    """
    t0 = time.perf_counter()
    picked = select_uncertain(frames, calc, partner_calc, s.disagreement_ev_per_a, s.max_frames)
    record: dict = {
        "frames_considered": len(frames),
        "partner_model": s.partner_model,
        "disagreement_ev_per_a": s.disagreement_ev_per_a,
        "label": s.label,
        "frames_labelled": [
            {"index": i, "disagreement_ev_per_a": d,
             **{k: frames[i].info[k] for k in ("temperature_k", "step") if k in frames[i].info}}
            for i, d in picked
        ],
        "selection_s": time.perf_counter() - t0,
    }
    if len(picked) < 2:
        record["skipped"] = (
            f"{len(picked)} of {len(frames)} frames disagree by more than {s.disagreement_ev_per_a:g} eV/A "
            f"(fine-tuning needs 2{'; no snapshots: is the equilibration shorter than snapshot_every_steps?' if not frames else ''}): "
            "production with the pretrained model"
        )
        return None, record
    chosen = [frames[i] for i, _ in picked]
    t0 = time.perf_counter()
    energies, forces = [], []
    for n, f in enumerate(chosen):
        if s.label == "partner":
            a = f.copy()
            a.calc = partner_calc
            energies.append(float(a.get_potential_energy()))
            forces.append(np.asarray(a.get_forces()))
        else:
            log = str(Path(log_dir) / f"finetune-label-{n}.txt") if log_dir else None
            e, g = gpaw_single_point(f, s.gpaw_ecut_ev, s.gpaw_kpt_density, log=log)
            energies.append(e)
            forces.append(g)
    record["label_s"] = time.perf_counter() - t0
    pretrained = []
    for f in chosen:
        a = f.copy()
        a.calc = calc
        pretrained.append(float(a.get_potential_energy()))
    energies, offset = align_energies(energies, pretrained)
    before = force_mae(chosen, calc, forces)
    t0 = time.perf_counter()
    model, fit = finetune_chgnet(base_version, chosen, energies, forces, s, cache_dir, device)
    record["train_s"] = time.perf_counter() - t0
    from .mlip import chgnet_calculator

    tuned = chgnet_calculator(model, device, stress=False)
    record.update(
        energy_offset_ev_per_atom=offset / len(chosen[0]),
        force_mae_before_ev_per_a=before,
        force_mae_after_ev_per_a=force_mae(chosen, tuned, forces),
        **fit,
    )
    return tuned, record
