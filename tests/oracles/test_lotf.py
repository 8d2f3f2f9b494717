"""Learn-on-the-fly MD: the mlip-md oracle fine-tunes CHGNet after equilibration and runs production with it."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from matloop.core.records import Candidate, Request
from matloop.oracles.finetune import FinetuneSettings, finetune_round
from matloop.oracles.md import MlipMdOracle, NvtRun


def li2o_primitive() -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return s.get_primitive_structure()


def request(structure: Structure) -> Request:
    return Request("r-lotf", Candidate.from_structure(structure, source="test"), "mlip-md", 0)


def test_finetune_is_a_chgnet_setting_and_leaves_the_version_alone_while_disabled():
    with pytest.raises(ValidationError, match="needs model chgnet"):
        MlipMdOracle(settings={"model": "sevennet", "finetune": {"enabled": True}})
    with pytest.raises(ValidationError, match="partner_model"):
        MlipMdOracle(settings={"finetune": {"enabled": True, "partner_model": "chgnet"}})
    with pytest.raises(ValidationError, match="label"):
        MlipMdOracle(settings={"finetune": {"enabled": True, "label": "vasp"}})
    # a disabled round changes nothing: the version of settings written before the setting existed stands
    plain = MlipMdOracle(settings={"temperatures_k": [1000, 1200]})
    assert MlipMdOracle(settings={"temperatures_k": [1000, 1200], "finetune": {"epochs": 9}}).version == plain.version
    on = MlipMdOracle(settings={"temperatures_k": [1000, 1200], "finetune": {"enabled": True}})
    assert on.version != plain.version
    assert MlipMdOracle(settings={"temperatures_k": [1000, 1200], "finetune": {"enabled": True, "epochs": 9}}).version != on.version


def test_a_round_without_two_uncertain_frames_keeps_the_pretrained_model(tmp_path):
    pytest.importorskip("sevenn")
    from matloop.oracles.mlip import compute_threads, load_calculator

    frames = _rattled_li2o(3)
    s = FinetuneSettings(enabled=True, label="partner", disagreement_ev_per_a=100.0)
    with compute_threads(1):  # as the oracles run (torch's default threads are many times slower on a busy machine)
        calc, record = finetune_round(frames, load_calculator("chgnet", "0.3.0", "cpu", stress=False),
                                      load_calculator("sevennet", None, "cpu"), s, "0.3.0", tmp_path)
    assert calc is None
    assert record["frames_considered"] == 3 and record["frames_labelled"] == []
    assert "0 of 3 frames" in record["skipped"] and "pretrained" in record["skipped"]
    assert not any(tmp_path.iterdir())  # nothing trained, nothing cached


def test_lotf_md_runs_production_with_the_finetuned_chgnet_and_reuses_its_weights(tmp_path, monkeypatch):
    """Three-atom Li2O, two temperatures, 20 equilibration steps (snapshots every 5), one epoch on 3 frames
    labelled by SevenNet, 1 ps of production: enough for the library's lag window, so the run finishes."""
    pytest.importorskip("sevenn")
    from chgnet.model import CHGNet

    from matloop.oracles.mlip import chgnet_calculator
    from matloop.oracles.mlip import compute_threads, load_calculator

    production_calcs = []
    extend = NvtRun.extend

    def spy(run, n_steps):
        production_calcs.append(run.atoms.calc)
        extend(run, n_steps)

    monkeypatch.setattr(NvtRun, "extend", spy)
    settings = dict(
        temperatures_k=[2000, 2600], supercell=[1, 1, 1], relax=False, timestep_fs=4.0, equilibration_steps=20,
        production_steps=260, adaptive=False, sample_every_steps=5, min_hops=0, msd_min_observations=1,
        max_framework_msd_a2=1000.0, bussi_taut_fs=20.0,
        finetune=dict(enabled=True, label="partner", disagreement_ev_per_a=0.0, max_frames=3, epochs=1,
                      snapshot_every_steps=5),
    )
    oracle = MlipMdOracle(settings=settings, site={"cache_dir": str(tmp_path)})
    obs = oracle.run(request(li2o_primitive()))
    assert obs.ok, obs.reason
    ft = obs.extra["finetune"]
    assert ft["frames_considered"] == 8  # 4 snapshots (steps 5-20) at each temperature
    assert ft["label"] == "partner" and ft["partner_model"] == "sevennet"
    labelled = ft["frames_labelled"]
    assert len(labelled) == 3 == ft["n_frames"]
    assert [f["disagreement_ev_per_a"] for f in labelled] == sorted((f["disagreement_ev_per_a"] for f in labelled),
                                                                    reverse=True)
    assert all(f["temperature_k"] in (2000.0, 2600.0) and 5 <= f["step"] <= 20 for f in labelled)
    assert ft["version"].startswith("0.3.0-ft-") and ft["cached"] is False
    assert ft["label_s"] > 0 and ft["train_s"] > 0
    assert ft["weights"].startswith(str(tmp_path / "chgnet-finetune" / "Li-O"))
    assert obs.extra["model"].endswith(f"model {ft['version']}")

    # production ran with the fine-tuned weights, not the pretrained ones
    assert len(production_calcs) == 2
    probe = obs_frame()
    with compute_threads(1):
        pretrained = forces(probe, load_calculator("chgnet", "0.3.0", "cpu", stress=False))
        tuned = forces(probe, chgnet_calculator(CHGNet.from_file(ft["weights"], use_device="cpu", verbose=False), stress=False))
        assert not np.allclose(tuned, pretrained, atol=1e-6)
        for calc in production_calcs:
            np.testing.assert_allclose(forces(probe, calc), tuned, atol=1e-5)

    # the same evaluation again: the same frames, the cached weights
    again = MlipMdOracle(settings=settings, site={"cache_dir": str(tmp_path)}).run(request(li2o_primitive()))
    assert again.ok, again.reason
    assert again.extra["finetune"]["cached"] is True
    assert again.extra["finetune"]["version"] == ft["version"]


def obs_frame():
    from ase.build import bulk

    a = bulk("Li2O", "fluorite", a=4.61)
    a.rattle(0.1, seed=3)
    return a


def forces(atoms, calc) -> np.ndarray:
    a = atoms.copy()
    a.calc = calc
    return a.get_forces()


def test_a_gpaw_labelled_round_aligns_the_energy_zero_and_moves_chgnet_towards_pbe_forces(tmp_path):
    """GPAW PBE labels (200 eV, 3x3x3 k-points on the 3-atom cell: ~2 s each) sit several eV/atom from CHGNet's
    energy zero; the round removes that offset and trains on the forces and the energy differences."""
    pytest.importorskip("sevenn")
    pytest.importorskip("gpaw")
    from matloop.oracles.mlip import compute_threads, load_calculator

    frames = _rattled_li2o(3)
    s = FinetuneSettings(enabled=True, label="gpaw-pbe", disagreement_ev_per_a=0.0, max_frames=2, epochs=2,
                         learning_rate=1e-3, gpaw_ecut_ev=200.0, gpaw_kpt_density=1.0)
    with compute_threads(1):
        calc, record = finetune_round(frames, load_calculator("chgnet", "0.3.0", "cpu", stress=False),
                                      load_calculator("sevennet", None, "cpu"), s, "0.3.0", tmp_path / "cache",
                                      log_dir=tmp_path)
    assert calc is not None and record["label"] == "gpaw-pbe" and len(record["frames_labelled"]) == 2
    assert sorted(p.name for p in tmp_path.glob("finetune-label-*.txt")) == ["finetune-label-0.txt", "finetune-label-1.txt"]
    # GPAW's energies are relative to its atomic references, CHGNet's on the MP scale (~ -4.7 eV/atom for Li2O)
    assert record["energy_offset_ev_per_atom"] > 3.0
    assert record["force_mae_after_ev_per_a"] < record["force_mae_before_ev_per_a"]
    assert record["cached"] is False and record["version"].startswith("0.3.0-ft-")


def _rattled_li2o(n: int) -> list:
    """``n`` fluorite Li2O primitive cells, rattled by 0.1 A with seeds 0..n-1."""
    from ase.build import bulk

    frames = []
    for i in range(n):
        a = bulk("Li2O", "fluorite", a=4.61)
        a.rattle(0.1, seed=i)
        frames.append(a)
    return frames
