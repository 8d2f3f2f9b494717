"""The campaign spec: one YAML file, validated by pydantic v2 models before anything runs.

Every model forbids unknown keys. ``load_campaign`` reports *every* problem at once with
its YAML path (``oracles[1].kind``) and line number, as an ``InputError`` that the CLI
turns into exit status 2 without a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from matloop.agents.modelling.features import FeatureSettings
from matloop.core.goals import Constraint as CoreConstraint
from matloop.core.oracle import SITE_KEYS, SiteSettings
from matloop.core.records import InputError


class _Model(BaseModel):
    # allow_inf_nan=False: every float of the campaign is finite unless a field says otherwise
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _non_empty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


#: a name or property: a string that is not empty or blank
Name = Annotated[str, AfterValidator(_non_empty)]


def _bounds_ordered(lo: float | None, hi: float | None) -> None:
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"min {lo:g} is above max {hi:g}: nothing can satisfy it")


class Objective(_Model):
    """What the campaign optimises: one property reported by one oracle."""

    model_config = ConfigDict(allow_inf_nan=True)  # window: [lo, .inf]; NaN is refused in _window

    property: Name = Field(description="property name, e.g. formation_energy_ev_per_atom or gap_ev")
    goal: Literal["maximize", "minimize", "window"] = Field(
        description="maximize (or max), minimize (or min), or land in a window")
    window: tuple[float, float] | None = Field(None, description="[lo, hi] for goal: window (hi may be .inf)")
    oracle: str | None = Field(
        None, description="name of the oracle whose value counts; default: the highest-fidelity oracle reporting it"
    )

    @field_validator("goal", mode="before")
    @classmethod
    def _goal_words(cls, v):
        # one goal vocabulary everywhere: max/min (as on the command line) mean maximize/minimize
        return {"max": "maximize", "min": "minimize"}.get(v, v) if isinstance(v, str) else v

    @field_validator("window")
    @classmethod
    def _no_nan(cls, v):
        if v is not None and any(math.isnan(x) for x in v):
            raise ValueError(f"window bounds must be numbers, got [{v[0]}, {v[1]}]")
        return v

    @model_validator(mode="after")
    def _window(self):
        if self.goal == "window":
            if self.window is None:
                raise ValueError("goal 'window' needs window: [lo, hi]")
            lo, hi = self.window
            if not lo < hi:
                raise ValueError(f"window lower bound {lo} must be below upper bound {hi}")
        elif self.window is not None:
            raise ValueError(f"window is only used with goal: window (goal is {self.goal})")
        return self


class Constraint(_Model):
    """A feasibility condition on one property, e.g. e_above_hull_ev_per_atom <= 0.1."""

    property: Name = Field(description="property name")
    oracle: str | None = Field(None, description="oracle reporting it (default: any that does)")
    max: float | None = Field(None, description="upper bound (inclusive)")
    min: float | None = Field(None, description="lower bound (inclusive)")

    @model_validator(mode="after")
    def _bounds(self):
        if self.max is None and self.min is None:
            raise ValueError("a constraint needs min and/or max")
        _bounds_ordered(self.min, self.max)
        return self

    def as_core(self) -> CoreConstraint:
        """This constraint as the agent and the runner use it (``matloop.core.goals.Constraint``)."""
        return CoreConstraint(self.property, self.oracle, self.min, self.max)


class SourceSpec(_Model):
    """A candidate source: a file pool, prototype enumeration, or a registered generator."""

    name: Name | None = Field(None, description="label stored as each candidate's source (default: kind)")
    kind: str = Field(description="file | prototypes | a registered generator (mutation, vae, optimade, ...)")
    settings: dict[str, Any] = Field(default_factory=dict, description="settings of this source kind")
    n_initial: int = Field(0, ge=0, description="for generators: candidates drawn before the first iteration")
    n_per_iteration: int = Field(0, ge=0, description="for generators: new candidates drawn each iteration")

    @property
    def label(self) -> str:
        """Name stored as each candidate's source: ``name``, or ``kind`` when unset."""
        return self.name or self.kind


class PromotionRule(_Model):
    """When a candidate moves up to this oracle from a cheaper one (a funnel rung)."""

    after: str = Field(description="name of the cheaper oracle whose result is read")
    top_k: int | None = Field(None, ge=1, description="each iteration, promote those of the current k best (by the objective on that oracle) not yet promoted")
    property: Name | None = Field(None, description="property of the cheaper oracle to filter on")
    min: float | None = Field(None, description="promote if property >= min")
    max: float | None = Field(None, description="promote if property <= max")

    @model_validator(mode="after")
    def _bounds(self):
        _bounds_ordered(self.min, self.max)
        return self


class OracleSpec(_Model):
    """One oracle (an evaluation tier): its science in ``settings``, how this machine runs it in ``site``."""

    name: Name = Field(description="unique name used in the store and in objective/constraints")
    kind: str = Field(
        description="registered oracle kind: lookup, mlip (chgnet and sevennet: the same oracle with that model "
        "as default), gpaw-pbe, gpaw-hse06, mlip-md, http, folder, command, manual, or a plug-in's"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="the oracle kind's science settings (hashed into its version)"
    )
    site: SiteSettings = Field(
        default_factory=SiteSettings,
        description="where and how this machine runs it: device, torch_threads, cache_dir, log_dir (never in the "
        "version); relative paths in settings are taken from the campaign file's folder",
    )
    cost: float = Field(1.0, ge=0, description="cost charged per evaluation, in cost_unit")
    cost_unit: str = Field("unit", description="seconds, core-hours, or a user unit")
    fidelity: int = Field(0, ge=0, description="0 = cheapest tier; higher = closer to the truth")
    timeout_s: float | None = Field(None, gt=0, description="wall-clock limit per evaluation")
    promote: PromotionRule | None = Field(None, description="funnel rule; without it the agent chooses candidates for this oracle directly")

    @field_validator("site", mode="before")
    @classmethod
    def _no_base_dir(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("base_dir") is not None:  # None: a dumped spec read back
            raise ValueError("base_dir is set by matloop (the campaign file's folder), not in the campaign")
        return v


class Budget(_Model):
    """When the campaign ends: whichever limit is hit first."""

    cost: float | None = Field(None, gt=0, description="total cost over all oracles")
    iterations: int | None = Field(None, ge=1, description="number of agent iterations")
    evaluations: int | None = Field(None, ge=1, description="total oracle evaluations (all tiers)")
    max_consecutive_failures: int = Field(
        20, ge=1, description="stop (exit status 4) after this many failed evaluations in a row, naming the most "
        "common reason; not a budget limit by itself")

    @model_validator(mode="after")
    def _some(self):
        if self.cost is None and self.iterations is None and self.evaluations is None:
            raise ValueError("budget needs at least one of cost, iterations, evaluations")
        return self


class StopRule(_Model):
    """Early stop: reaching a target value, or no improvement for some iterations."""

    kind: Literal["target", "no_improvement"] = Field(description="target | no_improvement")
    value: float | None = Field(None, description="for target: stop once the best reaches this value")
    patience: int | None = Field(None, ge=1, description="for no_improvement: iterations without a better best")

    @model_validator(mode="after")
    def _args(self):
        if self.kind == "target" and self.value is None:
            raise ValueError("stop rule 'target' needs value")
        if self.kind == "no_improvement" and self.patience is None:
            raise ValueError("stop rule 'no_improvement' needs patience")
        return self


class ExecutorSpec(_Model):
    """Where oracle jobs run."""

    kind: Literal["local", "inline", "dask"] = Field(
        "local", description="local worker processes, inline (same process), or dask distributed"
    )
    workers: int = Field(2, ge=1, description="parallel jobs")
    mode: Literal["batch", "async"] = Field(
        "batch",
        description="batch: plan batch_size requests, wait for all; async: keep every worker busy, proposing the "
        "next request (pending-aware) as soon as one finishes while the agent replans in the background",
    )
    address: str | None = Field(None, description="dask scheduler address (tcp://host:8786); none = LocalCluster")
    max_wait_s: float | None = Field(
        None, gt=0, description="stop waiting for slow (lab) results after this long; run again to keep polling"
    )


class FidelitySpec(_Model):
    """How the agent chooses which oracle (fidelity) measures a candidate."""

    strategy: Literal["funnel", "multi_fidelity"] = Field(
        "funnel",
        description="funnel: entry oracles get surrogate-ranked batches, costlier ones are reached by promote rules; "
        "multi_fidelity: every oracle reporting the objective property is a fidelity of one MultiFidelityGP and "
        "choose_requests picks candidates by the single-fidelity UCB on the top fidelity and asks each at the oracle with "
        "the best expected top-fidelity utility per unit cost",
    )
    model: dict[str, Any] = Field(
        default_factory=dict, description="multi_fidelity: MultiFidelitySettings (kind: mtgp | smfgp, point_term, ...)"
    )
    choice: dict[str, Any] = Field(
        default_factory=dict, description="multi_fidelity: ChoiceSettings (criterion: ucb | hits_per_cost | variance_per_cost, beta, ...)"
    )
    init: int = Field(
        3, ge=2, description="multi_fidelity: random candidates measured at every fidelity before the model plans"
    )
    pca_variance: float | None = Field(
        None, gt=0, le=1, description="multi_fidelity: project the features onto the principal components explaining "
        "this fraction of their variance before the GP sees them (None = all features)"
    )


class AgentSpec(_Model):
    """How the agent picks: surrogate, acquisition, initial random picks."""

    surrogate: dict[str, Any] = Field(default_factory=dict, description="surrogate settings (kind: gp | rf, ...)")
    acquisition: dict[str, Any] = Field(
        default_factory=dict,
        description="acquisition settings (kind: auto | qlognei | logei | ucb | thompson | window, init, beta, shortlist, ...)",
    )
    fidelity: FidelitySpec = Field(default_factory=FidelitySpec, description="funnel (promote rules) or multi_fidelity")


class GenerationSpec(_Model):
    """How generator sources share the per-iteration draw."""

    mix: Literal["fixed", "adaptive"] = Field(
        "fixed",
        description="fixed: each generator draws its n_per_iteration; adaptive: a Thompson-sampling bandit "
        "splits the total n_per_iteration among generators by their S.U.N. yield per oracle cost once E_hull is "
        "measured, else by how often their candidates came back in the top quartile",
    )


class ReportSpec(_Model):
    """End-of-run report options (e.g. a random-pick baseline to compare against)."""
    compare_random: bool = Field(
        False, description="also evaluate as many random picks from the same pool, to compare at the end"
    )


class CampaignSpec(_Model):
    """A whole campaign. Relative paths are resolved against the YAML file's folder."""

    name: Name = Field(description="campaign name")
    seed: int = Field(0, ge=0, description="seed of every random choice")
    objective: Objective | None = Field(None, description="what the campaign optimises (or objectives:)")
    objectives: list[Objective] | None = Field(
        None, min_length=2, description="two or more objectives: a Pareto search (qLogNEHVI); instead of objective"
    )
    constraints: list[Constraint] = Field(default_factory=list, description="feasibility conditions")
    sources: list[SourceSpec] = Field(min_length=1, description="where candidates come from")
    features: FeatureSettings = Field(default_factory=FeatureSettings, description="featurizers")
    agent: AgentSpec = Field(default_factory=AgentSpec, description="surrogate and acquisition")
    batch_size: int = Field(8, ge=1, description="requests per iteration")
    oracles: list[OracleSpec] = Field(min_length=1, description="evaluation tiers")
    budget: Budget
    stop: list[StopRule] = Field(default_factory=list, description="early stop rules")
    store: Name = Field(description="SQLite file holding the campaign state (created if absent)")
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec, description="where oracle jobs run")
    report: ReportSpec = Field(default_factory=ReportSpec, description="end-of-run comparison")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="mix of generator sources")

    @field_validator("oracles")
    @classmethod
    def _unique_oracles(cls, v):
        names = [o.name for o in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate oracle names {dup}")
        return v

    @model_validator(mode="after")
    def _references(self):
        names = {o.name for o in self.oracles}
        if self.objective is not None and self.objective.oracle is not None and self.objective.oracle not in names:
            raise ValueError(f"objective.oracle {self.objective.oracle!r} is not one of the oracles {sorted(names)}")
        for i, ob in enumerate(self.objectives or []):
            if ob.oracle is not None and ob.oracle not in names:
                raise ValueError(f"objectives[{i}].oracle {ob.oracle!r} is not one of the oracles {sorted(names)}")
        for i, c in enumerate(self.constraints):
            if c.oracle is not None and c.oracle not in names:
                raise ValueError(f"constraints[{i}].oracle {c.oracle!r} is not one of the oracles {sorted(names)}")
        for o in self.oracles:
            if o.promote and o.promote.after not in names:
                raise ValueError(f"oracle {o.name!r} promote.after {o.promote.after!r} is not an oracle")
        return self

    # -- derived ------------------------------------------------------------------------------
    base_dir: Path | None = Field(None, exclude=True, description="(internal) folder of the YAML file")
    source_yaml: str | None = Field(None, exclude=True, description="(internal) text of the YAML file")

    def resolve(self, path: str | Path) -> Path:
        """``path`` with ``~`` expanded, resolved against the YAML file's folder when relative."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.base_dir is None:
            return p
        return (self.base_dir / p).resolve()

    @property
    def multi_objective(self) -> bool:
        """True when ``objectives`` is set (a Pareto search), False for a single ``objective``."""
        return bool(self.objectives)

    @property
    def objective_list(self) -> list[Objective]:
        """Every objective: ``[objective]`` or ``objectives``."""
        return list(self.objectives) if self.objectives else [self.objective]

    @property
    def primary_objective(self) -> Objective:
        """``objective``, or ``objectives[0]`` (what best-so-far, the report and funnel top_k rank by)."""
        return self.objectives[0] if self.objectives else self.objective

    @property
    def objective_oracle(self) -> OracleSpec:
        """The oracle whose value of the (primary) objective counts."""
        if self.objectives:
            return self.oracle_of(self.objectives[0])
        if self.objective.oracle:
            return next(o for o in self.oracles if o.name == self.objective.oracle)
        return max(self.oracles, key=lambda o: o.fidelity)

    def oracle_of(self, objective: Objective) -> OracleSpec:
        """``objective.oracle``, else the highest-fidelity oracle reporting its property (else the highest overall)."""
        if objective.oracle:
            return next(o for o in self.oracles if o.name == objective.oracle)
        reporting = [o for o in self.oracles if objective.property in _properties_or_empty(o)]
        return max(reporting or self.oracles, key=lambda o: o.fidelity)

    def fidelity_oracles(self) -> list[OracleSpec]:
        """multi_fidelity: the oracles reporting the objective property, cheapest fidelity first."""
        prop = self.primary_objective.property
        return sorted((o for o in self.oracles if prop in _properties_or_empty(o)), key=lambda o: o.fidelity)


# -- loading with YAML paths and line numbers --------------------------------------------------


def _node_at(node, loc):
    """Follow a pydantic error location through the composed YAML node tree."""
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == key:
                    nxt = v
                    break
            if nxt is None:
                # unknown key: point at the key itself
                return node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return node
    return node


def _key_node(node, loc):
    """For an 'extra' error, the node of the offending key."""
    parent = _node_at(node, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for k, _ in parent.value:
            if k.value == loc[-1]:
                return k
    return parent


def _fmt_loc(loc) -> str:
    out = ""
    for k in loc:
        if isinstance(k, int):
            out += f"[{k}]"
        else:
            out += ("." if out else "") + str(k)
    return out or "(top level)"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        """The mapping of ``node``; raises ``yaml.constructor.ConstructorError`` at the line of a repeated key."""
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(path: Path):
    """Read a campaign YAML file; returns (data mapping, composed node tree); raises InputError if unusable."""
    if not path.exists():
        raise InputError("file not found", file=str(path))
    if path.is_dir():
        raise InputError("is a folder, expected a YAML file", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not a text (UTF-8) file: byte {exc.start} cannot be read; expected a YAML file",
                         file=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=str(path)) from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        root = yaml.compose(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"malformed YAML: {problem}", file=str(path), where=where) from None
    if not isinstance(data, dict):
        raise InputError("a campaign file must be a YAML mapping", file=str(path))
    return data, root


def settings_problems(model: type[BaseModel], data: dict, prefix: tuple, where) -> list[str]:
    """One problem line per validation error of ``data`` against ``model``, at YAML path ``prefix`` (``where`` adds the line)."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return [f"  {where((*prefix, *err['loc']))}: "
                f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors()]
    return []


def load_campaign(path: str | Path, overrides: dict[str, Any] | None = None) -> CampaignSpec:
    """Read and validate a campaign YAML; raise InputError listing every problem."""
    path = Path(path)
    data, root = parse_yaml(path)
    return validate_campaign(data, root, path, overrides)


def validate_campaign(data: dict, root, path: Path, overrides: dict[str, Any] | None = None,
                      base_dir: str | Path | None = None) -> CampaignSpec:
    """Validate a parsed campaign mapping (``root``: its YAML node tree, for line numbers) as ``load_campaign`` does.

    ``path`` names the campaign in messages; relative paths resolve against ``base_dir``
    (default: ``path``'s folder). Raises InputError listing every problem.
    """
    for dotted, value in (overrides or {}).items():
        _apply_override(data, dotted, value)
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            node = _key_node(root, loc) if err["type"] == "extra_forbidden" else _node_at(root, loc)
            line = node.start_mark.line + 1 if node is not None else "?"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            lines.append(f"  {_fmt_loc(loc)} (line {line}): {msg}")
        raise InputError(
            f"{len(lines)} problem(s) in the campaign:\n" + "\n".join(lines), file=str(path)
        ) from None
    spec.base_dir = Path(base_dir).resolve() if base_dir is not None else path.resolve().parent
    # the text the store keeps (campaign_spec); a mapping given in Python (from_dict) is dumped
    spec.source_yaml = path.read_text(encoding="utf-8") if path.is_file() else yaml.safe_dump(data, sort_keys=False)
    _check_kinds(spec, path, root)
    return spec


def _apply_override(data: dict, dotted: str, value: Any) -> None:
    """Set ``data`` at the dotted path (list items by index: ``oracles.0.cost``); InputError naming ``--set`` if it cannot."""
    keys = dotted.split(".")
    if not all(k.strip() for k in keys):
        raise InputError(f"{dotted}=...: the key has an empty part", where="--set")
    cur = data
    for depth, k in enumerate(keys):
        here = ".".join(keys[:depth + 1])
        last = depth == len(keys) - 1
        if isinstance(cur, list):
            if not k.lstrip("-").isdigit():
                raise InputError(f"{here}: {'.'.join(keys[:depth]) or '(top level)'} is a list; "
                                 f"{k!r} is not an index", where="--set")
            i = int(k)
            if not 0 <= i < len(cur):
                raise InputError(f"{here}: index {i} out of range; the list has {len(cur)} item(s) "
                                 f"(0..{len(cur) - 1})", where="--set")
            if last:
                cur[i] = value
            else:
                cur = cur[i]
        elif isinstance(cur, dict):
            if last:
                cur[k] = value
            else:
                cur = cur.setdefault(k, {})
        else:
            raise InputError(f"{here}: {'.'.join(keys[:depth])} is a value ({cur!r}), not a mapping or list",
                             where="--set")


def _check_kinds(spec: CampaignSpec, path: Path, root) -> None:
    """Registered names and per-kind settings, reported with YAML paths like the rest."""
    from matloop.agents.generation.sources import SOURCE_KINDS, source_settings_model
    from matloop.core.registry import RegistryError, names, oracle_class

    problems = []

    def where(loc):
        node = _node_at(root, loc)
        return f"{_fmt_loc(loc)} (line {node.start_mark.line + 1})"

    for i, o in enumerate(spec.oracles):
        try:
            cls = oracle_class(o.kind)
        except RegistryError as exc:
            problems.append(f"  {where(('oracles', i, 'kind'))}: {exc}")
            continue
        except Exception as exc:  # a plug-in that fails to import
            problems.append(f"  {where(('oracles', i, 'kind'))}: oracle kind {o.kind!r} failed to load: {exc}")
            continue
        declared = getattr(cls.Settings, "model_fields", {})
        moved = [k for k in o.settings if k in SITE_KEYS and k not in declared]
        for k in moved:
            problems.append(f"  {_key_where(root, ('oracles', i, 'settings', k))}: a site setting now, not science: "
                            f"move it to oracles[{i}].site.{k}")
        problems += settings_problems(cls.Settings, {k: v for k, v in o.settings.items() if k not in moved},
                                      ("oracles", i, "settings"), where)
    generator_kinds = set(names("matloop.generators"))
    for i, s in enumerate(spec.sources):
        if s.kind in SOURCE_KINDS:
            problems += settings_problems(source_settings_model(s.kind), s.settings, ("sources", i, "settings"), where)
        elif s.kind not in generator_kinds:
            known = sorted(set(SOURCE_KINDS) | generator_kinds)
            problems.append(f"  {where(('sources', i, 'kind'))}: unknown source kind {s.kind!r}; known: {', '.join(known)}")
    from matloop.agents.decision import acquisition as acq

    for section, model in (("surrogate", acq.SurrogateSettings), ("acquisition", acq.AcquisitionSettings)):
        problems += settings_problems(model, getattr(spec.agent, section), ("agent", section), where)
    objective_problems = _check_objectives(spec, where)
    problems += objective_problems
    if (spec.objective is None) != (not spec.objectives):  # exactly one of objective / objectives
        for loc, obj in _objective_locs(spec):
            obj_oracle = spec.oracle_of(obj) if spec.objectives else spec.objective_oracle
            try:
                props = _oracle_properties(obj_oracle)
                if props and obj.property not in props:
                    problems.append(
                        f"  {where((*loc, 'property'))}: oracle {obj_oracle.name!r} ({obj_oracle.kind}) does not report "
                        f"{obj.property!r}; it reports {sorted(props)}"
                    )
            except Exception:
                pass
        problems += _check_fidelity(spec, where)
    problems += _check_constraint_properties(spec, where)
    problems += _check_promote(spec, where)
    if problems:
        raise InputError(f"{len(problems)} problem(s) in the campaign:\n" + "\n".join(problems), file=str(path))


def _check_constraint_properties(spec: CampaignSpec, where) -> list[str]:
    """Each constraint's property is reported by its oracle (or by some oracle, when none is named)."""
    reported = {}
    for o in spec.oracles:
        try:
            reported[o.name] = _oracle_properties(o)
        except Exception:  # an unknown kind is reported elsewhere
            reported[o.name] = set()
    out = []
    for i, c in enumerate(spec.constraints):
        names = [c.oracle] if c.oracle else list(reported)
        if c.oracle and c.oracle not in reported:
            continue  # an unknown oracle name is reported by the spec model
        props = set().union(*(reported[n] for n in names)) if names else set()
        if props and c.property not in props:
            who = f"oracle {c.oracle!r} does not report" if c.oracle else "no oracle reports"
            out.append(f"  {where(('constraints', i, 'property'))}: {who} {c.property!r}; reported: {sorted(props)}")
    return out


def _check_promote(spec: CampaignSpec, where) -> list[str]:
    """Each promote rule reads another oracle, and a property that oracle reports."""
    out = []
    by_name = {o.name: o for o in spec.oracles}
    for i, o in enumerate(spec.oracles):
        rule = o.promote
        if rule is None or rule.after not in by_name:  # an unknown name is reported by the spec model
            continue
        if rule.after == o.name:
            out.append(f"  {where(('oracles', i, 'promote', 'after'))}: names oracle {o.name!r} itself; promote from a "
                       "cheaper oracle")
            continue
        if rule.property is not None:
            props = _properties_or_empty(by_name[rule.after])
            if props and rule.property not in props:
                out.append(f"  {where(('oracles', i, 'promote', 'property'))}: oracle {rule.after!r} does not report "
                           f"{rule.property!r}; it reports {sorted(props)}")
    return out


def check_inputs(spec: CampaignSpec, path: str | Path, store: str | Path | None = None, *,
                 parse_pools: bool = True) -> None:
    """What the campaign reads and writes is there and usable; raises InputError listing every problem.

    Checks the store path (``store``, else the spec's) is not a folder; every file source's
    file exists with the columns its settings name (with ``parse_pools``, every row of a CSV pool
    is read with its ``on_bad_row`` rule; structure files are read by ``matloop run``, which
    also reads every source before writing any candidate); and every oracle's own input files (an oracle class may define
    ``input_problems() -> [(settings key, problem)]``, e.g. the lookup table and its columns).
    """
    from matloop.agents.generation.sources import FileSource
    from matloop.core.registry import oracle_class

    path = Path(path)
    text = spec.source_yaml if spec.source_yaml is not None else path.read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=UniqueKeyLoader)  # for line numbers (a mapping from the API: as dumped)

    def where(loc):
        node = _node_at(root, loc)
        return f"{_fmt_loc(loc)} (line {node.start_mark.line + 1})"

    problems = []
    store_path = Path(store).expanduser() if store else spec.resolve(spec.store)
    loc = ("store",) if not store else None
    named = where(loc) if loc else "--store"
    if store_path.is_dir():
        problems.append(f"  {named}: {store_path} is a folder; give the store's file name (e.g. store.sqlite)")
    elif store_path.parent.exists() and not store_path.parent.is_dir():
        problems.append(f"  {named}: {store_path.parent} is a file, not a folder")
    for i, s in enumerate(spec.sources):
        if s.kind != "file":
            continue
        src = FileSource(s.label, s.settings, spec.base_dir)
        here = ("sources", i, "settings")
        if not src.path.exists():
            problems.append(f"  {where((*here, 'path'))}: candidate file not found: {src.path}")
            continue
        columns = [f"  {where((*here, key))}: {msg}" for key, msg in src.column_problems()]
        problems += columns
        if parse_pools and not columns and src.format == "csv":  # structure archives are read by run (minutes)
            try:
                src.load()
            except InputError as exc:
                problems.append(f"  {where(here)}: {exc}")
    for i, o in enumerate(spec.oracles):
        try:
            site = SiteSettings(**o.site.model_dump(exclude={"base_dir"}), base_dir=spec.base_dir)
            oracle = oracle_class(o.kind)(name=o.name, settings=o.settings, site=site)
        except Exception:  # noqa: BLE001 - unknown kinds and invalid settings are reported by load_campaign
            continue
        check = getattr(oracle, "input_problems", None)
        if check is not None:
            problems += [f"  {where(('oracles', i, 'settings', key))}: {msg}" for key, msg in check()]
    if problems:
        raise InputError(f"{len(problems)} problem(s) in the campaign:\n" + "\n".join(problems), file=str(path))


def _key_where(root, loc) -> str:
    """``loc`` and the line of its key (the key's own line, where ``where`` gives its value's)."""
    return f"{_fmt_loc(loc)} (line {_key_node(root, loc).start_mark.line + 1})"


def _objective_locs(spec: CampaignSpec) -> list[tuple[tuple, Objective]]:
    if spec.objectives:
        return [(("objectives", i), o) for i, o in enumerate(spec.objectives)]
    return [(("objective",), spec.objective)]


def _check_objectives(spec: CampaignSpec, where) -> list[str]:
    """Exactly one of objective/objectives; what a multi-objective campaign cannot use."""
    if spec.objective is None and not spec.objectives:
        return ["  objective (line 1): required key is missing (give objective: or objectives:)"]
    if spec.objective is not None and spec.objectives:
        return [f"  {where(('objectives',))}: give either objective or objectives, not both"]
    if not spec.objectives:
        return []
    out = []
    seen = set()
    for i, o in enumerate(spec.objectives):
        key = (o.property, spec.oracle_of(o).name)
        if key in seen:
            out.append(f"  {where(('objectives', i))}: {o.property!r} on {key[1]!r} appears twice")
        seen.add(key)
    for i, _ in enumerate(spec.stop):
        out.append(f"  {where(('stop', i))}: stop rules need a single objective (not supported with objectives:)")
    if spec.report.compare_random:
        out.append(f"  {where(('report', 'compare_random'))}: the random comparison needs a single objective")
    if spec.agent.surrogate.get("kind", "gp") != "gp":
        out.append(f"  {where(('agent', 'surrogate', 'kind'))}: objectives: needs GP surrogates (qLogNEHVI)")
    if spec.agent.surrogate.get("pca_variance") is not None:
        out.append(f"  {where(('agent', 'surrogate', 'pca_variance'))}: not supported with objectives:")
    if spec.agent.surrogate.get("kernel_structure", "single") != "single":
        out.append(f"  {where(('agent', 'surrogate', 'kernel_structure'))}: only 'single' is supported with objectives:")
    return out


def _check_fidelity(spec: CampaignSpec, where) -> list[str]:
    """agent.fidelity: its settings, and the oracles a multi-fidelity campaign can use."""
    from matloop.agents.decision.multifidelity import ChoiceSettings
    from matloop.agents.modelling.multifidelity import MultiFidelitySettings

    fid = spec.agent.fidelity
    out = []
    for section, model in (("model", MultiFidelitySettings), ("choice", ChoiceSettings)):
        out += settings_problems(model, getattr(fid, section), ("agent", "fidelity", section), where)
    if fid.strategy != "multi_fidelity":
        return out
    here = ("agent", "fidelity", "strategy")
    if spec.agent.surrogate.get("kernel_structure", "single") != "single":
        out.append(f"  {where(('agent', 'surrogate', 'kernel_structure'))}: not used by multi_fidelity (its model is "
                   "agent.fidelity.model); leave it at 'single' or use strategy: funnel")
    if spec.objectives:
        return out + [f"  {where(here)}: multi_fidelity needs a single objective, not objectives:"]
    prop = spec.objective.property
    for i, o in enumerate(spec.oracles):
        if o.promote is not None:
            out.append(f"  {where(('oracles', i, 'promote'))}: promote rules are not used with agent.fidelity.strategy: "
                       "multi_fidelity (the agent chooses each request's oracle); remove it or use strategy: funnel")
    fids = spec.fidelity_oracles()
    names = {o.name for o in fids}
    for i, o in enumerate(spec.oracles):
        if o.name not in names:
            out.append(f"  {where(('oracles', i))}: oracle {o.name!r} does not report {prop!r}; with multi_fidelity "
                       "every oracle must be a fidelity of the objective")
        elif not o.cost > 0:
            out.append(f"  {where(('oracles', i, 'cost'))}: multi_fidelity needs a positive cost per evaluation")
    if len(fids) < 2:
        out.append(f"  {where(here)}: multi_fidelity needs at least 2 oracles reporting {prop!r}, found {len(fids)}")
    levels = [o.fidelity for o in fids]
    if len(set(levels)) != len(levels):
        out.append(f"  {where(here)}: the oracles reporting {prop!r} need distinct fidelity values, got {levels}")
    if fids and spec.objective_oracle.name != fids[-1].name:
        out.append(f"  {where(('objective', 'oracle'))}: with multi_fidelity the objective's oracle must be the "
                   f"highest fidelity ({fids[-1].name!r})")
    return out


def _properties_or_empty(o: OracleSpec) -> set[str]:
    try:
        return _oracle_properties(o)
    except Exception:
        return set()


def _oracle_properties(o: OracleSpec) -> set[str]:
    """What the oracle reports with these settings (many declare it per instance: lookup columns,
    lab properties, no formation energy when it is switched off); the class's list if it cannot be built."""
    from matloop.core.registry import oracle_class

    cls = oracle_class(o.kind)
    try:
        return set(cls(name=o.name, settings=o.settings).properties)
    except Exception:  # invalid settings are reported by _check_kinds
        return set(cls.properties)


# -- the spec a store was started with ----------------------------------------------------------

#: top-level keys a resume may change with ``matloop run --allow-changes``: how much is spent, where
#: jobs run and when to stop, never what is searched, measured or optimised
SAFE_CHANGES = ("budget", "executor", "stop")
#: where the store is says nothing about the campaign (a moved store is not a changed campaign)
_NOT_COMPARED = ("store",)


def spec_record(spec: CampaignSpec) -> dict:
    """What a store keeps of its campaign (meta ``campaign_spec``): the YAML text and the resolved spec as JSON."""
    return {"yaml": spec.source_yaml, "resolved": spec.model_dump(mode="json")}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def spec_changes(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(YAML path, old value, new value)`` for every leaf that differs between two resolved specs (``None``: absent)."""
    a = {k: v for k, v in _flatten(old).items() if k.split(".")[0].split("[")[0] not in _NOT_COMPARED}
    b = {k: v for k, v in _flatten(new).items() if k.split(".")[0].split("[")[0] not in _NOT_COMPARED}
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume(stored: dict | None, spec: CampaignSpec, allow_changes: bool, store: str | Path) -> list[str]:
    """Refuse to resume a store with a campaign spec other than the one it was started with.

    Args:
        stored: the store's ``campaign_spec`` meta (None for a new store, or one older than this check).
        spec: the campaign being run now.
        allow_changes: accept changes confined to ``SAFE_CHANGES``.
        store: the store's path, named in the error.

    Returns:
        One line per accepted change (empty when nothing changed).

    Raises:
        InputError: a change outside ``SAFE_CHANGES`` (named, with old and new values), or any
            change without ``allow_changes``.
    """
    if not stored or "resolved" not in stored or stored["resolved"].get("name") != spec.name:
        return []  # a store of another campaign is refused by Campaign.run, naming both
    changes = spec_changes(stored["resolved"], spec.model_dump(mode="json"))
    if not changes:
        return []

    def line(path, old, new):
        return f"  {path}: {json.dumps(old)} -> {json.dumps(new)}"

    unsafe = [c for c in changes if c[0].split(".")[0].split("[")[0] not in SAFE_CHANGES]
    lines = [line(*c) for c in changes]
    if unsafe:
        head = (f"the campaign file changed since this store was started; {len(unsafe)} change(s) "
                f"cannot be resumed even with --allow-changes (only {', '.join(SAFE_CHANGES)} may change):\n"
                + "\n".join(line(*c) for c in unsafe))
        safe = [line(*c) for c in changes if c not in unsafe]
        tail = ("\nchanges that --allow-changes would accept:\n" + "\n".join(safe)) if safe else ""
        raise InputError(head + tail + "\nrestore the file, or start a new store (--store or store:)", file=str(store))
    if not allow_changes:
        raise InputError(f"the campaign file changed since this store was started ({len(changes)} change(s)):\n"
                         + "\n".join(lines) + "\nrun with --allow-changes to resume with them "
                         f"({', '.join(SAFE_CHANGES)} may change)", file=str(store))
    return lines
