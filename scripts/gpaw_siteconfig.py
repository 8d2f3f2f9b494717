# GPAW build configuration used by scripts/setup.sh, which passes it to gpaw's setup.py
# through GPAW_CONFIG (setup.py exec()s this file; with no GPAW_CONFIG it looks for
# ./siteconfig.py in the unpacked sdist, then ~/.gpaw/siteconfig.py). Without it,
# `pip install gpaw` 26.x fails with "algorithm: No such file".
# Serial build (GPAW runs under MPI only when built with mpi=True) linked against Debian's
# libxc-dev, libopenblas-dev (as libblas) and libfftw3-dev.
compiler = 'g++'
mpi = False
fftw = True
libraries = ['xc', 'fftw3', 'blas']
