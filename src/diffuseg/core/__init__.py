"""Shared parts every layer uses: atomic writes, paths, progress, runtime (device and
precision), the consensus rule, ensembles of samples, validation at the boundary."""
