"""Candidate generation: pool sources, prototypes, database enumeration, mutation, generative decoding, validity."""
