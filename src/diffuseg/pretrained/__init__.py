"""Pretrained models: a run folder's essentials packaged with a model card, found by name.

- ``manifest``: ``model.json`` (what the model is, the sha256 of every weight file), checked at
  load;
- ``lookup``: models by name (a path that exists, the models installed with diffuseg, then the
  folders of ``DIFFUSEG_MODELS``);
- ``package``: a run folder -> a model folder (fp16 EMA weights, config, plan, labels, splits,
  fingerprint without paths, ``MODEL.md``, ``model.json``);
- ``validation``: the validation numbers a model folder records (95 % bootstrap intervals);
- ``card``: the model card's required sections, and the draft written when none is given;
- ``finetune``: ``train --init``: a model's matching layers loaded into a new run.

docs/pretrained.md describes the folder, the lookup and the licences.
"""
