"""Sampling: samplers over a process, windows over large volumes, RePaint and x0 guidance."""
