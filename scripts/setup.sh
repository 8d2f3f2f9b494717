#!/usr/bin/env bash
# Idempotent set-up: system packages, .venv at the repository root, torch (CPU), matloop
# with its test and DFT extras. Re-running does nothing when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.matloop-setup"
WANT="$(cat pyproject.toml scripts/setup.sh scripts/gpaw_siteconfig.py | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c "import matloop.loop" 2>/dev/null; then
    exit 0
fi

# System libraries for GPAW (C++ compiler, libxc, BLAS, FFTW). Only when missing; needs root (CI runs as root).
need_apt=()
for pkg in g++ libxc-dev libopenblas-dev libfftw3-dev chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
    echo "[setup] installing system packages: ${need_apt[*]}"
    SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ ! -x "$PY" ]]; then
    echo "[setup] creating $VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
fi

# torch first, pinned to the CPU build available on this machine (a bare `torch` pulls CUDA).
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch (CPU)"
    "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi

echo "[setup] installing matloop and its dependencies"
"$PY" -m pip install -q -e ".[test,optimade,sevennet]"

# GPAW (the `dft` extra): built from the sdist against Debian's libxc, OpenBLAS and FFTW.
# gpaw's setup.py reads its build configuration from the file named by GPAW_CONFIG (else
# ./siteconfig.py in the unpacked sdist, else ~/.gpaw/siteconfig.py); without ours, gpaw 26
# fails to build ("algorithm: No such file"). Its build dependencies (numpy, pybind11) come
# through pip's build isolation. PAW setups come from the gpaw-data wheel, which gpaw finds
# by itself (no GPAW_SETUP_PATH needed). Checking `gpaw.cgpaw` catches a build whose C
# extension is missing.
if ! "$PY" -c "import gpaw.cgpaw, gpaw_data" 2>/dev/null; then
    echo "[setup] building GPAW (about 3 minutes, once)"
    GPAW_CONFIG="$ROOT/scripts/gpaw_siteconfig.py" "$PY" -m pip install -q "gpaw>=24.1" "gpaw-data>=1.0" \
        || { echo "[setup] WARNING: GPAW build failed; DFT oracles will report that they are unavailable" >&2; }
fi

echo "$WANT" > "$STAMP"
echo "[setup] done"
