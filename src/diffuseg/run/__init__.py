"""The run folder: what it holds, its log, its setup (new or resumed), checkpoints, weights."""
