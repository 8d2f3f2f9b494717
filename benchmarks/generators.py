"""Generators judged by what they find: S.U.N. yield against a random-substitution baseline, and rediscovery.

Data: the 1,265 Materials Project structures of matbench_phonons (diverse, at most 14 sites;
not a full enumeration). Every generator gets the same campaign state: the structures with at
most ``--max-atoms`` sites as the pool, with fitness = -(formation energy of the formula on the
shipped reference hull) where the hull has the formula (the labels a campaign starting from
Materials Project data would hold).

S.U.N. (``sources`` and ``baseline``): each source is asked for ``--n`` candidates once; every
candidate it returns is evaluated by the ML tier through the oracle contract
(``registry.oracle_class("mlip")``: CHGNet relaxation, then the energy above the shipped
Materials Project hull). A proposal counts as

* valid: passes ``ValidityFilter`` (default settings) before relaxation;
* stable: the evaluation succeeded and ``e_above_hull_ev_per_atom <= --e-hull`` (0.1 eV/atom);
* unique: its relaxed structure matches no earlier proposal of the same source (StructureMatcher);
* novel: its relaxed structure matches no pool structure, and its reduced formula is not a phase
  of the reference hull (the shipped hull holds compositions, not structures: a structure of a
  known stable composition cannot be shown to be new, so it is not counted).

``sun_rate`` = S.U.N. proposals / proposals (Clopper-Pearson 95 % interval), also per ML
evaluation spent (pre-relaxations included) and per CPU second (generation + evaluation,
``time.process_time``). The baseline is ``SubstitutionGenerator``: a uniformly random pool
structure with one element replaced by pymatgen's data-mined substitution probabilities,
measured in the same run with the same budget. ``vs_baseline`` gives the ratio of S.U.N. rates
and Fisher's exact test p-value.

Rediscovery (``rediscovery``): a chemistry slice (structures containing ``--holdout-element``
with at least three elements; by default the ternary and higher selenides) is held out; the
generators see the rest and each proposes ``--rediscovery-samples`` candidates (no known-formula
filter: the held-out formulas are in the reference hull). A held-out structure is regenerated
when a proposal matches it (StructureMatcher, unrelaxed). No relaxation is spent here.

Usage: ``python benchmarks/generators.py --json [--n 40] [--seed 0] [--rediscovery-samples 300] [--jobs 6]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "phonons" / "matbench_phonons.json.gz"


def log(msg: str) -> None:
    print(f"[generators] {msg}", file=sys.stderr, flush=True)


def load_phonons(path: Path) -> list:
    """The matbench_phonons structures (pymatgen ``Structure``), in file order."""
    from pymatgen.core import Structure

    if not path.exists():
        raise SystemExit(f"matbench_phonons not found at {path} (use --data)")
    with gzip.open(path, "rt") as fh:
        d = json.load(fh)
    return [Structure.from_dict(row[0]) for row in d["data"]]


def make_sources(args, reference: str | None) -> dict:
    """The generators compared, by name (``reference``: the avoid_formulas of the hull-aware ones)."""
    from matloop.agents.generation.mutation import MutationGenerator
    from matloop.agents.generation.substitution import SubstitutionGenerator
    from matloop.agents.generation.vae import VaeGenerator
    from matloop.agents.generation.wyckoff import WyckoffGenerator

    return {
        "mutation": MutationGenerator("mutation"),
        # the same operators, told what cannot be new or stable: known formulas and charge imbalance are rejected
        "mutation-novel": MutationGenerator("mutation-novel", {
            "avoid_formulas": reference, "validity": {"charge_balance": True},
            "rates": {"substitution": 0.8, "crossover": 0.2, "swap": 0, "strain": 0, "displacement": 0}}),
        "vae": VaeGenerator("vae", {"max_atoms": args.max_atoms, "epochs": args.vae_epochs, "max_training_structures": 1500}),
        "wyckoff": WyckoffGenerator("wyckoff", {"avoid_formulas": reference, "max_atoms": args.max_atoms}),
        "substitution-novel": SubstitutionGenerator("substitution-novel", {"avoid_formulas": reference}),
    }


def binomial(k: int, n: int) -> list[float] | None:
    """Clopper-Pearson 95 % interval of k successes in n trials."""
    from scipy.stats import binomtest

    if n == 0:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95)
    return [round(ci.low, 4), round(ci.high, 4)]


class SunJudge:
    """Evaluates proposals with the mlip oracle and counts valid / stable / unique / novel ones."""

    def __init__(self, pool_structures: list, reference_formulas: frozenset[str], e_hull: float, settings: dict):
        from matloop.agents.generation.validity import Deduplicator, ValidityFilter
        from matloop.core.registry import oracle_class

        self.oracle = oracle_class("mlip")(name="mlip", settings=settings, site={"device": "cpu", "torch_threads": 1})
        self.validity = ValidityFilter()
        self.pool = Deduplicator(pool_structures)
        self.reference = reference_formulas
        self.e_hull = e_hull

    def evaluate(self, cand):
        """The oracle's observation of one candidate."""
        from matloop.core.records import Request

        return self.oracle.run(Request(Request.make_id(cand.id, self.oracle.name, 0), cand, self.oracle.name, 0))

    def judge(self, proposals: list, gen_cpu_s: float, extra_evaluations: int = 0) -> dict:
        """S.U.N. counts and rates of one source's proposals (evaluating each)."""
        from pymatgen.core import Structure

        from matloop.agents.generation.validity import Deduplicator

        seen = Deduplicator()
        from matloop.agents.generation.validity import charge_balanced

        counts = dict.fromkeys(("proposed", "valid", "evaluated", "failed", "stable", "unique", "novel", "sun",
                                "sun_charge_balanced"), 0)
        cpu0 = time.process_time()
        found = []
        for cand in proposals:
            counts["proposed"] += 1
            st = cand.pmg_structure()
            valid = self.validity.check(st)[0]
            counts["valid"] += valid
            obs = self.evaluate(cand)
            counts["evaluated"] += 1
            if not obs.ok:
                counts["failed"] += 1
                continue
            relaxed = Structure.from_dict(obs.extra["relaxed_structure"])
            e = obs.value("e_above_hull_ev_per_atom")
            stable = e is not None and e <= self.e_hull
            unique = seen.add(relaxed)
            novel = relaxed.composition.reduced_formula not in self.reference and self.pool.is_novel(relaxed)
            counts["stable"] += stable
            counts["unique"] += unique
            counts["novel"] += novel
            if valid and stable and unique and novel:
                counts["sun"] += 1
                balanced = charge_balanced(relaxed.composition)  # SMACT: LiF3 'stable' as LiF + F2 is no new material
                counts["sun_charge_balanced"] += balanced
                found.append({"formula": relaxed.composition.reduced_formula, "e_above_hull_ev_per_atom": round(e, 4),
                              "charge_balanced": balanced,
                              "operator": cand.provenance.get("operator"), "detail": cand.provenance.get("detail")})
        eval_cpu = time.process_time() - cpu0
        n, k = counts["proposed"], counts["sun"]
        evaluations = counts["evaluated"] + extra_evaluations
        cpu = gen_cpu_s + eval_cpu
        return {
            **counts,
            "sun_rate": round(k / n, 4) if n else None,
            "sun_rate_ci95": binomial(k, n),
            "sun_charge_balanced_rate": round(counts["sun_charge_balanced"] / n, 4) if n else None,
            "sun_charge_balanced_ci95": binomial(counts["sun_charge_balanced"], n),
            "sun_per_evaluation": round(k / evaluations, 4) if evaluations else None,
            "sun_per_cpu_second": round(k / cpu, 5) if cpu else None,
            "evaluations": evaluations,
            "cpu_seconds": {"generate": round(gen_cpu_s, 1), "evaluate": round(eval_cpu, 1)},
            "stable_rate": round(counts["stable"] / n, 4) if n else None,
            "novel_rate": round(counts["novel"] / n, 4) if n else None,
            "sun_found": found,
        }


def vs_baseline(row: dict, base: dict) -> dict:
    """Ratio of S.U.N. rates and Fisher's exact test (two-sided) against the baseline."""
    from scipy.stats import fisher_exact

    a, n = row["sun"], row["proposed"]
    b, m = base["sun"], base["proposed"]
    if not n or not m:
        return {}
    ratio = (a / n) / (b / m) if b else (float("inf") if a else None)
    p = fisher_exact([[a, n - a], [b, m - b]]).pvalue
    return {"ratio": None if ratio is None else (round(ratio, 2) if np.isfinite(ratio) else "inf"), "fisher_p": round(float(p), 4)}


_SETUP: dict = {}


def sun_setup(args):
    """The pool state and the judge (built once per process)."""
    if "state" in _SETUP:
        return _SETUP["state"], _SETUP["judge"], _SETUP["pool_info"]
    from matloop.agents.generation.validity import REFERENCE_FORMULAS, known_formulas
    from matloop.core.protocols import CampaignState
    from matloop.core.records import Candidate
    from matloop.oracles.hull import ReferenceHull

    warnings.filterwarnings("ignore")
    hull = ReferenceHull.shipped()
    reference = known_formulas(REFERENCE_FORMULAS)
    pool = [s for s in load_phonons(args.data) if len(s) <= args.max_atoms]
    cands = [Candidate.from_structure(s, source="phonons") for s in pool]
    fitness = {}
    for c in cands:
        ph = hull.find_phase(c.formula)
        if ph is not None:
            fitness[c.id] = -ph.formation_energy_ev_per_atom
    state = CampaignState(candidates={c.id: c for c in cands}, fitness=fitness)
    judge = SunJudge(pool, reference, args.e_hull, {"fmax": args.fmax, "max_steps": args.max_steps})
    judge.evaluate(cands[0])  # load the model outside any source's clock
    info = {"n_structures": len(cands), "with_fitness": len(fitness), "max_atoms": args.max_atoms,
            "fitness": "-(formation energy of the formula on the shipped hull), eV/atom"}
    _SETUP.update(state=state, judge=judge, pool_info=info)
    return state, judge, info


def sun_of_source(args, i: int, name: str) -> dict:
    """Generate ``args.n`` candidates with source ``name`` (the ``i``-th, which seeds its rng) and judge them."""
    from matloop.agents.generation.substitution import SubstitutionGenerator
    from matloop.agents.generation.validity import REFERENCE_FORMULAS

    state, judge, info = sun_setup(args)
    gen = SubstitutionGenerator("baseline") if name == "baseline" else make_sources(args, REFERENCE_FORMULAS)[name]
    rng = np.random.default_rng([args.seed, i])
    cpu0, t0 = time.process_time(), time.perf_counter()
    proposals = gen.generate(args.n, state, rng)
    gen_cpu = time.process_time() - cpu0
    relaxations = int(getattr(gen, "stats", {}).get("relax_rejected", 0)) if getattr(gen, "relaxer", None) else 0
    row = judge.judge(proposals, gen_cpu, extra_evaluations=relaxations)
    row["requested"] = args.n
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["pool"] = info
    log(f"{name}: proposed {row['proposed']} sun {row['sun']} rate {row['sun_rate']} ci {row['sun_rate_ci95']} "
        f"stable {row['stable']} novel {row['novel']} ({row['seconds']} s)")
    return row


def run_sun(args, result: dict) -> None:
    """The S.U.N. part: every source and the baseline, ``args.n`` proposals each (``args.jobs`` processes)."""
    names = ["baseline", *make_sources(args, None)]
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            rows = dict(zip(names, ex.map(partial(sun_of_source, args), range(len(names)), names)))
    else:
        rows = {name: sun_of_source(args, i, name) for i, name in enumerate(names)}
    for row in rows.values():
        result["pool"] = row.pop("pool")
    base = rows.pop("baseline")
    base["generator"] = "SubstitutionGenerator (uniform random parent, one data-mined substitution, no filter)"
    result["baseline"] = base
    for name, row in rows.items():
        row["vs_baseline"] = vs_baseline(row, base)
        result["sources"][name] = row
    best = max(rows, key=lambda k: rows[k]["sun_rate"] or 0.0)
    result["best"] = {"source": best, **rows[best]["vs_baseline"]}


def run_rediscovery(args, structures: list, result: dict) -> None:
    """Hold out a chemistry slice; count held-out structures regenerated by each generator and the baseline."""
    from matloop.agents.generation.substitution import SubstitutionGenerator
    from matloop.agents.generation.validity import Deduplicator
    from matloop.core.protocols import CampaignState
    from matloop.core.records import Candidate

    el = args.holdout_element
    held = [s for s in structures if el in {e.symbol for e in s.composition.elements} and len(s.composition.elements) >= 3]
    train = [s for s in structures if not (el in {e.symbol for e in s.composition.elements} and len(s.composition.elements) >= 3)]
    train = [s for s in train if len(s) <= args.max_atoms]
    cands = [Candidate.from_structure(s, source="train") for s in train]
    state = CampaignState(candidates={c.id: c for c in cands})
    out = {"slice": f"structures containing {el} with >= 3 elements", "n_heldout": len(held),
           "n_heldout_within_max_atoms": sum(len(s) <= args.max_atoms for s in held), "n_train": len(train),
           "samples": args.rediscovery_samples, "sources": {}}
    runs = [("baseline", SubstitutionGenerator("baseline")), *make_sources(args, None).items()]
    for i, (name, gen) in enumerate(runs):
        if name.endswith("-novel"):
            continue  # without a known-formula filter these are the plain generators again
        t0 = time.perf_counter()
        proposals = gen.generate(args.rediscovery_samples, state, np.random.default_rng([args.seed, 100 + i]))
        made = Deduplicator([c.pmg_structure() for c in proposals])
        hits = sorted(h.composition.reduced_formula for h in held if not made.is_novel(h))
        in_slice = sum(1 for c in proposals if el in c.pmg_structure().composition.as_dict())
        row = {"proposed": len(proposals), "rediscovered": len(hits), "rate": round(len(hits) / len(held), 4) if held else None,
               "rate_ci95": binomial(len(hits), len(held)), "proposals_containing_element": in_slice,
               "found": hits, "seconds": round(time.perf_counter() - t0, 1)}
        log(f"rediscovery {name}: {row}")
        if name == "baseline":
            out["baseline"] = row
        else:
            out["sources"][name] = row
    result["rediscovery"] = out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the only output on stdout)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="matbench_phonons.json.gz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=40, help="candidates requested from each source (each one evaluated)")
    ap.add_argument("--max-atoms", type=int, default=8, help="largest pool structure and generated cell")
    ap.add_argument("--e-hull", type=float, default=0.1, help="stable: energy above the reference hull at most this (eV/atom)")
    ap.add_argument("--fmax", type=float, default=0.1, help="relaxation force threshold of the evaluating mlip oracle")
    ap.add_argument("--max-steps", type=int, default=150, help="relaxation steps of the evaluating mlip oracle")
    ap.add_argument("--vae-epochs", type=int, default=60)
    ap.add_argument("--holdout-element", default="Se")
    ap.add_argument("--rediscovery-samples", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=1, help="processes for the S.U.N. part (one source each)")
    ap.add_argument("--skip-sun", action="store_true", help="only the rediscovery test")
    ap.add_argument("--skip-rediscovery", action="store_true", help="only the S.U.N. measurement")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    t_start = time.perf_counter()
    result: dict = {
        "data": str(args.data),
        "seed": args.seed,
        "definitions": {
            "valid": "ValidityFilter (default) before relaxation",
            "stable": f"mlip oracle (CHGNet) relaxation ok and e_above_hull_ev_per_atom <= {args.e_hull} on the shipped MP hull",
            "unique": "relaxed structure matches no earlier proposal of the same source (StructureMatcher)",
            "novel": "relaxed structure matches no pool structure and its reduced formula is no reference-hull phase",
            "sun_rate": "valid & stable & unique & novel / proposed",
            "sun_charge_balanced_rate": "S.U.N. and the relaxed composition passes SMACT (charge neutrality + electronegativity)",
        },
        "sources": {},
    }
    if not args.skip_sun:
        run_sun(args, result)
    if not args.skip_rediscovery:
        run_rediscovery(args, load_phonons(args.data), result)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
