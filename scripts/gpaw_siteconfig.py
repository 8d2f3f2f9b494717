# GPAW build configuration used by scripts/setup.sh (pip install gpaw 26.x needs it here:
# without it the build fails with "algorithm: No such file").
compiler = 'g++'
mpi = False
fftw = True
libraries = ['xc', 'fftw3', 'blas']
