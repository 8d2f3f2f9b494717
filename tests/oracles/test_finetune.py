"""LOTF fine-tuning: frames where CHGNet and SevenNet disagree, one fine-tuning round, the weights cache."""

from __future__ import annotations

import numpy as np
import pytest

from matloop.oracles.finetune import FinetuneSettings, finetune_chgnet, force_disagreement, select_uncertain

pytest.importorskip("sevenn")


def rattled_li2o(n: int):
    from ase.build import bulk

    frames = []
    for i in range(n):
        a = bulk("Li2O", "fluorite", a=4.61)  # 3-atom primitive cell, O at the origin
        a.set_chemical_symbols(["O", "Li", "Li"])
        a = a.repeat((2, 1, 1))
        a.rattle(0.15, seed=i)
        frames.append(a)
    return frames


def test_one_finetuning_round_moves_chgnet_towards_its_labels_and_is_cached(tmp_path):
    from matloop.oracles.mlip import compute_threads

    with compute_threads(1):  # as the oracles run: torch's default threads were many times slower on a busy machine
        one_round(tmp_path)


def one_round(tmp_path):
    from matloop.oracles.mlip import _chgnet_model, load_calculator

    chgnet = load_calculator("chgnet", "0.3.0", "cpu", stress=False)
    sevennet = load_calculator("sevennet", "7net-0", "cpu")
    frames = rattled_li2o(4)
    picked = select_uncertain(frames, chgnet, sevennet, threshold_ev_per_a=0.0, max_frames=3)
    assert len(picked) == 3
    assert [d for _, d in picked] == sorted((d for _, d in picked), reverse=True)
    assert picked[0][1] == pytest.approx(force_disagreement(frames[picked[0][0]], chgnet, sevennet))
    assert select_uncertain(frames, chgnet, sevennet, threshold_ev_per_a=100.0, max_frames=3) == []

    # labels from the partner potential (the cheap stand-in for GPAW PBE single points)
    chosen = [frames[i] for i, _ in picked]
    energies, forces = [], []
    for f in chosen:
        g = f.copy()
        g.calc = sevennet
        energies.append(g.get_potential_energy())
        forces.append(g.get_forces())

    def force_mae(model) -> float:
        pred = [model.predict_structure(_structure(f), task="ef")["f"] for f in chosen]
        return float(np.mean([np.abs(p - t).mean() for p, t in zip(pred, forces)]))

    s = FinetuneSettings(enabled=True, label="partner", epochs=2, learning_rate=1e-3)
    before = force_mae(_chgnet_model("0.3.0", "cpu"))
    model, record = finetune_chgnet("0.3.0", chosen, energies, forces, s, tmp_path)
    assert force_mae(model) < before
    assert record["cached"] is False and record["chemical_system"] == "Li-O"
    assert record["version"].startswith("0.3.0-ft-")
    # the same frames and settings: the cached weights, the same version
    again, cached = finetune_chgnet("0.3.0", chosen, energies, forces, s, tmp_path)
    assert cached["cached"] is True and cached["version"] == record["version"]
    assert force_mae(again) == pytest.approx(force_mae(model), rel=1e-5)
    # trained afresh elsewhere: the same weights (the version names one training, whatever ran before it)
    import random

    random.seed(12345)
    fresh, trained = finetune_chgnet("0.3.0", chosen, energies, forces, s, tmp_path / "elsewhere")
    assert trained["cached"] is False and trained["version"] == record["version"]
    assert force_mae(fresh) == pytest.approx(force_mae(model), rel=1e-5)


def _structure(atoms):
    from matloop.oracles.mlip import atoms_to_structure

    return atoms_to_structure(atoms)
