"""Synthetic training pairs, DiffBoost-style (Zhang et al., IEEE TMI 2024): a conditional image
diffusion model draws new images whose anatomy follows a given mask and its edge map, guided by
an optional text prompt, so that segmentors can train on more (image, mask) pairs.

Modules: ``edges`` (the mask's edge map), ``prompts`` (tokens and their learned embedding),
``generator`` (the model: process + network + loss, classifier-free guidance), ``train`` (its
training loop and folder), ``masks`` (new masks: real, merged, elastic, a segmentor's samples),
``synthesize`` (writes a dataset folder), ``fidelity`` (mask fidelity and image statistics).
"""
