"""Modelling: matminer features, surrogates (GP, random forest) and the multi-fidelity GP."""
