"""Loading a trained run and segmenting images: ``Predictor.from_run(run).segment(image)``.

A run folder is loaded from its own files alone: ``config.json`` builds the method, and the
weights ``weights.json`` names (``predict_uses``: ``ema_best.safetensors``, the EMA weights of the
best validation, or ``ema.safetensors``, the last; ``diffuseg.run.verdict``) fill its networks;
a run without weights.json uses ``ema.safetensors`` (or ``model.safetensors``). Nothing is
unpickled. A model folder (``diffuseg.pretrained``: fp16 EMA weights in ``model.safetensors``,
cast into the fp32 networks) loads the same way, after the sha256 of its weights is checked;
``Predictor.from_pretrained(NAME)`` finds one by name.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffuseg.config import RunConfig, load_config
from diffuseg.core.ensemble import Result, summarise
from diffuseg.core.paths import check_output, safe_name
from diffuseg.core.runtime import autocast, autocast_dtype, resolve_device
from diffuseg.core.validation import MAX_SAMPLES, check_count, check_seed
from diffuseg.data.resample import resample_to_reference, resample_to_spacing
from diffuseg.data.transforms import normalize_intensity
from diffuseg.errors import DataError
from diffuseg.inference.marks import Constraints, on_grid
from diffuseg.inference.slices import sample_slices, slice_record
from diffuseg.io import Geometry, read_image
from diffuseg.methods import Method, build_method
from diffuseg.pretrained.lookup import resolve
from diffuseg.pretrained.manifest import is_model_folder, verify_weights
from diffuseg.run.verdict import predict_weights
from diffuseg.run.weights import load_networks, load_state
from diffuseg.sampling.memory import check_sampling_memory
from diffuseg.sampling.samplers import on_step


@dataclass
class Predictor:
    method: Method
    config: RunConfig
    run_dir: Path
    device: torch.device
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (DIFFUSEG_PRECISION, runtime.py)

    def __post_init__(self) -> None:
        autocast_dtype(self.precision, self.device)  # a bad DIFFUSEG_PRECISION: refused here

    def autocast(self):
        """The precision every network call of this predictor runs in: ``segment`` and the
        explanations (``diffuseg.review.explain``) use this one context, so an explanation is of the
        sample ``segment`` returns."""
        return autocast(self.device, autocast_dtype(self.precision, self.device))

    def precision_used(self) -> str:
        """fp32, bf16 or fp16: what ``autocast`` runs in (recorded in each result.json)."""
        dtype = autocast_dtype(self.precision, self.device)
        return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

    @classmethod
    def from_run(cls, run_dir: str | Path, *, device: str = "auto", use_ema: bool = True,
                 precision: str = "auto") -> Predictor:
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").is_file():
            raise DataError(f"'{run_dir}' is not a run folder (no config.json); "
                            "give the -o folder of 'diffuseg train'")
        if is_model_folder(run_dir):
            verify_weights(run_dir)  # a damaged or changed weight file: one line naming it
        config = load_config(run_dir / "config.json")
        dev = resolve_device(device)
        method = build_method(config).to(dev).eval()
        weights = predict_weights(run_dir, use_ema)
        load_networks(method.networks(), load_state(weights), weights, run_dir / "config.json")
        method.window = tuple(config.data.patch_size) if config.spatial_dims == 3 else None
        return cls(method, config, run_dir, dev, precision)

    @classmethod
    def from_pretrained(cls, name: str | Path, *, device: str = "auto",
                        precision: str = "auto") -> Predictor:
        """A model by name (``diffuseg models``: shipped with diffuseg, or in a folder of
        ``DIFFUSEG_MODELS``) or by path; an unknown name is one line listing the known ones."""
        return cls.from_run(resolve(name), device=device, precision=precision)

    def check_steps(self, steps: int | None, n_samples: int | None
                    ) -> tuple[int | None, int]:
        """None steps are left to the method (``sample.steps``, or the method's own default)."""
        n_samples = self.config.sample.n_samples if n_samples is None else n_samples
        self.method.sampling(steps)  # the one check of steps (and of the sampler)
        check_count(n_samples, "--samples", MAX_SAMPLES)
        return steps, n_samples

    def prepare(self, image: np.ndarray, source: str = "image") -> torch.Tensor:
        expected = self.config.in_channels
        if image.ndim != self.config.spatial_dims + 1:
            raise DataError(f"{source}: expected a {self.config.spatial_dims}D image "
                            f"[C, *spatial], got shape {tuple(image.shape)}")
        if image.shape[0] != expected:
            fix = ("convert the image to one channel (grayscale) first" if expected == 1
                   else f"give the {expected} channel files of the case (case_0000 ... "
                   f"case_{expected - 1:04d}) or an image with {expected} channels (e.g. RGB)"
                   if image.shape[0] < expected else
                   f"keep only the {expected} channel(s) the model was trained on")
            raise DataError(f"{source} has {image.shape[0]} channel(s) but the model was trained "
                            f"on {expected}; {fix}")
        with np.errstate(all="ignore"):  # overflow and NaN are refused just below
            image = normalize_intensity(image, self.config.data.intensity,
                                        self.config.data.ct_window)
        if not np.isfinite(image).all():  # finite float32 inputs normalise to finite values
            raise DataError(f"{source} holds NaN/Inf values (or values beyond float32's range, "
                            "3.4e38); replace them (e.g. with 0) or fix the scaling")
        return torch.from_numpy(image)[None].to(self.device)

    def slices_volume(self, image: np.ndarray) -> bool:
        """Whether ``image`` is a volume ``[C, X, Y, Z]`` that this 2D run segments slice by slice
        (``diffuseg.inference.slices``)."""
        return self.config.spatial_dims == 2 and image.ndim == 4

    def takes(self, image: np.ndarray) -> bool:
        """Whether ``segment`` accepts ``image``: the run's channel count, and its spatial_dims
        or, for a 2D run, a volume (slice by slice)."""
        dims_ok = image.ndim == self.config.spatial_dims + 1 or self.slices_volume(image)
        return dims_ok and image.shape[0] == self.config.in_channels

    def segment(self, image: np.ndarray, *, geometry: Geometry | None = None,
                n_samples: int | None = None, steps: int | None = None, seed: int = 0,
                source: str = "image", progress: Callable[[int], None] | None = None,
                constraints: Constraints | None = None,
                on_slice: Callable[[int, int], None] | None = None) -> Result:
        """Samples, consensus and uncertainty for one image ``[C, *spatial]`` (raw intensities):
        ``summarise(self.sample(...))``. A 2D run given a volume ``[C, X, Y, Z]`` segments it
        slice by slice (``diffuseg.inference.slices``; ``on_slice(done, total)`` after each
        slice) and forms the maps over the volume."""
        if self.slices_volume(image):
            samples = sample_slices(self, image, n_samples=n_samples, steps=steps, seed=seed,
                                    source=source, progress=progress, constraints=constraints,
                                    on_slice=on_slice)
        else:
            samples = self.sample(image, geometry=geometry, n_samples=n_samples, steps=steps,
                                  seed=seed, source=source, progress=progress,
                                  constraints=constraints)
        return summarise(samples)

    @torch.no_grad()
    def sample(self, image: np.ndarray, *, geometry: Geometry | None = None,
               n_samples: int | None = None, steps: int | None = None, seed: int = 0,
               source: str = "image", progress: Callable[[int], None] | None = None,
               constraints: Constraints | None = None) -> torch.Tensor:
        """The samples ``[S, 1, K, *spatial]`` (probabilities, float32, CPU) of one image
        ``[C, *spatial]`` (raw intensities) of the run's spatial_dims.

        When the run resamples 3D data (``data.spacing``) and ``geometry`` is given, the image is
        resampled to that spacing, and every sample's probabilities are mapped back onto the
        input's grid (trilinear) before the consensus and uncertainty are formed there.
        ``progress(k)`` is called after each sampling step k. ``constraints``: pixels marked
        certainly inside / outside (of class ``label``), on the image's grid; every sample holds
        them (guided resampling, ``diffuseg.sampling.repaint``; with ``data.spacing`` the marks are
        resampled to the model grid (nearest) for the sampling, and the samples mapped back are
        projected onto them on the input grid, ``KnownPixels.hold``)."""
        steps, n_samples = self.check_steps(steps, n_samples)
        spacing = self.config.data.spacing if self.config.spatial_dims == 3 else None
        grid = None
        known = held = None
        if constraints is not None:
            k = self.config.num_classes
            constraints.check(tuple(image.shape[1:]), k)
            held = constraints.known("cpu", k)  # the marks on the input grid
        if spacing is not None and geometry is not None:
            if constraints is not None:
                constraints = on_grid(constraints, geometry, spacing)
            image, grid = resample_to_spacing(image, geometry, spacing, "bilinear")
        x = self.prepare(image, source)
        if constraints is not None:
            known = constraints.known(self.device, self.config.num_classes,
                                      self.config.sample.resample_jumps)
        check_seed(seed)
        window = self.method.window or x.shape[2:]
        voxels = int(np.prod(x.shape[2:]))
        in_window = int(np.prod([min(s, w) for s, w in zip(x.shape[2:], window, strict=True)]))
        width = max(self.config.network.channels[0], self.config.num_classes)
        check_sampling_memory(n_samples, voxels, width,  # DIFFUSEG_MAX_WORK_BYTES
                              window_voxels=in_window if in_window < voxels else None,
                              channels=max(self.config.num_classes, x.shape[1]))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        # the progress hook, when given, replaces any outer one for this call only
        hook = contextlib.nullcontext() if progress is None else on_step(
            lambda k, _step: progress(k))
        with self.autocast(), hook:
            samples = self.method.segment(x, n_samples, steps=steps, generator=generator,
                                          known=known)
        samples = samples.float().cpu()
        if grid is not None:
            samples = map_back(samples, grid, geometry)
            if held is not None:
                samples = held.hold(samples)
        return samples

    def predict_file(self, path: str | Path | Sequence[Path], out_dir: str | Path, *,
                     n_samples: int | None = None, steps: int | None = None, seed: int = 0,
                     overwrite: bool = False, dicom: bool | None = None,
                     reference: str | Path | None = None, dicom_samples: bool = False,
                     rtstruct: bool = False, progress: Callable[[int], None] | None = None,
                     extra: dict | None = None, constraints: Constraints | None = None,
                     on_slice: Callable[[int, int], None] | None = None) -> Path:
        """Segment one image and write its outputs into ``out_dir/<case>/`` (see
        ``diffuseg.inference.prediction_folder.write_result``). ``path`` is a file, a DICOM series
        folder, or the
        channel files of one case (nnU-Net's ``case_0000``, ``case_0001``, ...), in order.

        DICOM objects (``diffuseg.io.dicom_seg``) go to ``<case>/dicom/`` when ``dicom`` is True,
        or when it is None and the input is a DICOM series; a non-DICOM input needs the
        ``reference`` series folder it was converted from. ``rtstruct`` adds the consensus as an
        RT Structure Set (``diffuseg.io.rtstruct``; implies the DICOM objects). ``constraints``:
        guided resampling (``segment``); the counts of marked pixels are recorded in the case's
        JSON. A volume given to a 2D run is segmented slice by slice (``segment``;
        ``on_slice(done, total)``)."""
        from diffuseg.inference.prediction_folder import lock_output, write_result

        paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
        image, geometry = read_channels(paths)
        case_dir = Path(out_dir) / case_name(paths[0])
        check_output(paths, out_dir, case_dir)  # -o is not an input, nor holds or lies in one
        write_dicom = None
        if dicom or rtstruct or (dicom is None and (geometry.kind == "dicom"
                                                    or reference is not None)):
            from diffuseg.io.dicom_outputs import write_dicom_outputs
            from diffuseg.io.dicom_seg import reference_for, run_label_names
            from diffuseg.io.segment_codes import user_table

            refs = reference_for(geometry, reference)  # checked before any sampling
            labels = run_label_names(self.run_dir)
            codes = user_table(self.run_dir)

            def write_dicom(folder: Path) -> None:  # inside the case folder's atomic swap
                write_dicom_outputs(result, refs, folder / "dicom", label_names=labels,
                                    method=self.config.method.name, samples=dicom_samples,
                                    rtstruct=rtstruct, code_table=codes)

        with lock_output(out_dir):  # one writer per output folder; re-entrant
            if case_dir.exists() and any(case_dir.iterdir()) and not overwrite:
                raise DataError(f"output folder '{case_dir}' already exists; pass --overwrite "
                                "to replace it or choose another -o")
            result = self.segment(image, geometry=geometry, n_samples=n_samples, steps=steps,
                                  seed=seed, source=str(paths[0]), progress=progress,
                                  constraints=constraints, on_slice=on_slice)
            sampler, used_steps = self.method.sampling(steps)  # what sample() ran
            write_result(result, geometry, case_dir, source=paths[0],  # replaces the whole folder
                         extra={"run": str(self.run_dir.absolute()), "sampler": sampler,
                                "steps": used_steps, "seed": seed,
                                "threads": torch.get_num_threads(), "device": str(self.device),
                                "precision": self.precision_used(),
                                **guided_extra(constraints, self.config.sample.resample_jumps),
                                **slice_record(self, image), **(extra or {})}, image=image,
                         also=write_dicom)
        return case_dir


def read_channels(paths: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case and stack them; they must share one grid."""
    arrays, geometry = [], None
    for path in paths:
        array, geo = read_image(path)
        if geometry is not None and not geo.same_grid(geometry):
            raise DataError(f"'{path}' is not on the grid of '{paths[0]}'; the channel files of "
                            "one case must share shape and geometry")
        arrays.append(array)
        geometry = geometry or geo
    return np.concatenate(arrays, axis=0), geometry


def map_back(samples: torch.Tensor, grid: Geometry, geometry: Geometry) -> torch.Tensor:
    """``[S, 1, K, *grid]`` probabilities -> ``[S, 1, K, *geometry.shape]`` (trilinear)."""
    s, b, k = samples.shape[:3]
    flat = samples.reshape(s * b * k, *samples.shape[3:]).numpy()
    back = resample_to_reference(flat, grid.affine, geometry, "bilinear")
    return torch.from_numpy(back).clamp(0, 1).reshape(s, b, k, *geometry.shape)


IMAGE_ENDINGS = (".nii.gz", ".nii", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def case_name(path: Path, keep_channel: bool = False) -> str:
    """'case_0000.nii.gz' -> 'case' (nnU-Net channel suffix dropped), 'img.png' -> 'img'; made
    a safe folder name (``diffuseg.core.paths.safe_name``: no '..', separators or over-long
    names)."""
    return safe_name(_stem(Path(path), keep_channel))


def _stem(path: Path, keep_channel: bool = False) -> str:
    name = path.name
    for ext in IMAGE_ENDINGS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    if not keep_channel and len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]
    return name


def list_inputs(path: str | Path) -> list[list[Path]]:
    """The images under ``path``, each as the list of its channel files: a file, a DICOM series
    folder, or a folder of images in which ``case_0000``, ``case_0001``, ... are one case."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"input '{path}' does not exist; check the path given to -i")
    if path.is_file():
        return [[path]]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    cases: dict[str, list[Path]] = {}
    for p in files:
        if p.name.lower().endswith(IMAGE_ENDINGS):  # an image file
            cases.setdefault(case_name(p), []).append(p)
    if cases:
        return list(cases.values())
    if files:  # a DICOM series folder is one image
        return [[path]]
    raise DataError(f"input folder '{path}' holds no images (.png, .tif, .jpg, .nii.gz) "
                    "or DICOM files")


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def guided_extra(constraints: Constraints | None, default_jumps: int = 1) -> dict:
    """What a prediction records of the reviewer's marks: the marked pixel counts, the class
    they are about, the RePaint resamplings per step that were used and, when one was given,
    the decoder-guidance scale (otherwise the run's config holds it)."""
    if constraints is None:
        return {}
    scale = {} if constraints.scale is None else {"guidance_scale": constraints.scale}
    return {"constraints": {"inside": int(constraints.inside.sum()),
                            "outside": int(constraints.outside.sum()),
                            "label": constraints.label,
                            "jumps": constraints.jumps or default_jumps, **scale}}
