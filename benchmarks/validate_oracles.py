"""Every real oracle tier next to reference values (a script, not a test).

Runs ``validate_dft.py`` (GPAW: Si and LiCl PBE and HSE06 gaps) and ``validate_mlip.py``
(CHGNet formation energies of binaries vs Materials Project; one MLIP-MD migration energy
vs experiment) and prints both tables. Arguments after ``--mlip`` go to the MLIP script,
e.g. a longer MD run on a GPU machine:

    python benchmarks/validate_oracles.py --mlip --steps 5000 --device cuda
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mlip_args = argv[argv.index("--mlip") + 1:] if "--mlip" in argv else []
    dft_args = argv[: argv.index("--mlip")] if "--mlip" in argv else argv
    rc = 0
    for script, args in (("validate_dft.py", dft_args), ("validate_mlip.py", mlip_args)):
        print(f"== {script} {' '.join(args)}", flush=True)
        rc |= subprocess.call([sys.executable, str(HERE / script), *args])
    return rc


if __name__ == "__main__":
    sys.exit(main())
