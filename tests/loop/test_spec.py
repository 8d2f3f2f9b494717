import pytest

from matloop.loop.spec import load_campaign
from matloop.core.records import InputError

from .helpers import write_campaign


def test_valid_campaign_loads(tmp_path, grid_csv):
    spec = load_campaign(write_campaign(tmp_path, grid_csv))
    assert spec.name == "grid"
    assert spec.objective_oracle.name == "table"
    assert spec.base_dir == tmp_path.resolve()


def test_every_problem_reported_with_path_and_line(tmp_path, grid_csv):
    path = write_campaign(tmp_path, grid_csv)
    text = path.read_text().replace("batch_size: 4", "batch_size: four\ncolour: blue")
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        load_campaign(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "batch_size (line" in msg and "colour (line" in msg and "unknown key" in msg
    line_of_colour = next(i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("colour"))
    assert f"colour (line {line_of_colour})" in msg


def test_unknown_oracle_kind_names_yaml_path(tmp_path, grid_csv):
    path = write_campaign(
        tmp_path, grid_csv,
        oracles=[
            {"name": "a", "kind": "lookup", "settings": {"table": str(grid_csv), "columns": {"target": "target"}}},
            {"name": "b", "kind": "vasp-magic"},
        ],
    )
    with pytest.raises(InputError, match=r"oracles\[1\]\.kind \(line \d+\): unknown oracle kind 'vasp-magic'"):
        load_campaign(path)


def test_oracle_settings_validated(tmp_path, grid_csv):
    path = write_campaign(
        tmp_path, grid_csv,
        oracles=[{"name": "a", "kind": "lookup", "settings": {"table": str(grid_csv), "columns": {"target": "target"}, "colums": 1}}],
    )
    with pytest.raises(InputError, match=r"oracles\[0\]\.settings\.colums \(line \d+\): unknown key"):
        load_campaign(path)


def test_objective_property_must_be_reported(tmp_path, grid_csv):
    path = write_campaign(tmp_path, grid_csv, objective={"property": "gap_ev", "goal": "maximize"})
    with pytest.raises(InputError, match="does not report 'gap_ev'"):
        load_campaign(path)


def test_window_needs_bounds(tmp_path, grid_csv):
    path = write_campaign(tmp_path, grid_csv, objective={"property": "target", "goal": "window"})
    with pytest.raises(InputError, match="window"):
        load_campaign(path)


def test_malformed_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nobjective: {property: a\n")
    with pytest.raises(InputError, match=r"bad.yaml line \d+, column \d+: malformed YAML"):
        load_campaign(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_campaign(tmp_path / "nope.yaml")


def test_no_python_tags(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(InputError, match="malformed YAML"):
        load_campaign(p)


def test_override(tmp_path, grid_csv):
    spec = load_campaign(write_campaign(tmp_path, grid_csv), {"batch_size": 7, "budget.evaluations": 3})
    assert spec.batch_size == 7 and spec.budget.evaluations == 3


def test_surrogate_kernel_structure_is_validated_with_its_path(tmp_path, grid_csv):
    path = write_campaign(tmp_path, grid_csv, agent={"surrogate": {"kernel_structure": "additive"}})
    with pytest.raises(InputError, match=r"agent\.surrogate\.kernel_structure \(line \d+\): Input should be "
                                         r"'single' or 'additive_fractions'"):
        load_campaign(path)
    path = write_campaign(tmp_path, grid_csv,
                          agent={"surrogate": {"kernel_structure": "additive_fractions", "pca_variance": 0.9}})
    with pytest.raises(InputError, match=r"agent\.surrogate \(line \d+\): .*cannot be combined with pca_variance"):
        load_campaign(path)
    spec = load_campaign(write_campaign(tmp_path, grid_csv, agent={"surrogate": {"kernel_structure": "additive_fractions"}}))
    assert spec.agent.surrogate == {"kernel_structure": "additive_fractions"}


# -- site settings ------------------------------------------------------------------------------
def _mlip_oracle(**entry) -> list[dict]:
    lookup = {"name": "table", "kind": "lookup", "settings": {"table": "pool.csv", "columns": {"target": "target"}}}
    return [lookup, {"name": "mlip", "kind": "mlip", **entry}]


@pytest.mark.parametrize("key", ["device", "torch_threads", "cache_dir"])
def test_site_keys_under_settings_name_their_new_place(tmp_path, grid_csv, key):
    path = write_campaign(tmp_path, grid_csv, oracles=_mlip_oracle(settings={"fmax": 0.05, key: 1}))
    with pytest.raises(InputError) as exc:
        load_campaign(path)
    line = next(i + 1 for i, text in enumerate(path.read_text().splitlines()) if text.strip().startswith(f"{key}:"))
    assert (f"oracles[1].settings.{key} (line {line}): a site setting now, not science: "
            f"move it to oracles[1].site.{key}") in str(exc.value)
    assert "1 problem(s)" in str(exc.value)  # fmax is fine: only the moved key is reported


def test_site_mapping_is_validated_with_its_path(tmp_path, grid_csv):
    path = write_campaign(tmp_path, grid_csv, oracles=_mlip_oracle(site={"device": "tpu", "threads": 2}))
    with pytest.raises(InputError) as exc:
        load_campaign(path)
    msg = str(exc.value)
    assert "oracles[1].site.device (line" in msg and "'auto', 'cpu' or 'cuda'" in msg
    assert "oracles[1].site.threads (line" in msg and "unknown key" in msg


def test_base_dir_is_filled_by_the_loop_not_the_campaign(tmp_path, grid_csv):
    path = write_campaign(tmp_path, grid_csv, oracles=_mlip_oracle(site={"base_dir": "/elsewhere"}))
    with pytest.raises(InputError, match=r"oracles\[1\]\.site \(line \d+\): .*base_dir is set by matloop"):
        load_campaign(path)
    spec = load_campaign(write_campaign(tmp_path, grid_csv, oracles=_mlip_oracle(site={"device": "cpu"})))
    assert spec.oracles[1].site.device == "cpu" and spec.oracles[1].site.base_dir is None


def test_moved_key_exits_2_without_traceback(tmp_path, grid_csv, capsys):
    from matloop.loop.cli import main

    path = write_campaign(tmp_path, grid_csv, oracles=_mlip_oracle(settings={"device": "cpu"}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "move it to oracles[1].site.device" in err and "Traceback" not in err


def test_older_mlip_kinds_and_model_spellings_validate(tmp_path, grid_csv):
    oracles = _mlip_oracle(settings={"model": "r2scan"})
    oracles += [{"name": "seven", "kind": "sevennet", "settings": {"model": "7net-0"}},
                {"name": "chg", "kind": "chgnet", "settings": {"model": "0.3.0"}}]
    assert len(load_campaign(write_campaign(tmp_path, grid_csv, oracles=oracles)).oracles) == 4
    path = write_campaign(tmp_path, grid_csv, oracles=_mlip_oracle(settings={"model": "mace"}))
    with pytest.raises(InputError, match=r"oracles\[1\]\.settings\.model \(line \d+\): .*unknown model 'mace'"):
        load_campaign(path)


def test_objective_checked_against_what_the_oracle_reports_with_its_settings(tmp_path, grid_csv):
    oracles = _mlip_oracle(settings={"formation_energy": False})
    path = write_campaign(tmp_path, grid_csv, oracles=oracles,
                          objective={"property": "formation_energy_ev_per_atom", "goal": "minimize", "oracle": "mlip"})
    with pytest.raises(InputError, match=r"oracle 'mlip' \(mlip\) does not report 'formation_energy_ev_per_atom'; "
                                         r"it reports \['energy_ev_per_atom'\]"):
        load_campaign(path)


def test_spec_with_site_round_trips_through_json(tmp_path, grid_csv):
    from matloop.loop.spec import CampaignSpec

    spec = load_campaign(write_campaign(tmp_path, grid_csv, oracles=_mlip_oracle(site={"torch_threads": 2})))
    again = CampaignSpec.model_validate_json(spec.model_dump_json())
    assert again.oracles[1].site == spec.oracles[1].site


def test_constraint_on_a_property_no_oracle_reports_is_an_error(tmp_path, grid_csv):
    """A misspelt constraint property would silently make every candidate infeasible: refuse it."""
    p = write_campaign(tmp_path, grid_csv, constraints=[{"property": "targte", "max": 0.5},
                                                        {"property": "target", "oracle": "table", "max": 0.5}])
    with pytest.raises(InputError) as e:
        load_campaign(p)
    msg = str(e.value)
    assert "constraints[0].property" in msg and "'targte'" in msg and "'target'" in msg
    assert "constraints[1]" not in msg
