"""DiffBoost-style synthesis: exact edge maps, prompts, guidance, deterministic generation, new
masks with provenance, a written dataset that passes `check`, mixing that never touches held-out
cases, and a generator that learns to follow the mask (slow)."""

import json
import sys

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from diffuseg.config import NetworkConfig, ProcessConfig
from diffuseg.data import Dataset, check_dataset, load_splits, write_phantom_dataset
from diffuseg.errors import ConfigError, DataError
from diffuseg.synthesis.edges import edge_map
from diffuseg.synthesis.fidelity import intensity_statistics, two_sample_accuracy
from diffuseg.synthesis.generator import (
    GeneratorConfig,
    GeneratorTrainConfig,
    ImageGenerator,
    from_unit,
    to_unit,
)
from diffuseg.synthesis.masks import MaskPool, elastic_deform, parse_sources
from diffuseg.synthesis.prompts import NULL, PromptEncoder, build_vocabulary, encode, tokenize
from diffuseg.synthesis.synthesize import synthesize
from diffuseg.synthesis.train import load_generator, train_generator
from tests.helpers import randomise

TINY_NET = NetworkConfig(channels=(8, 16), attention_levels=(False, False), norm_groups=4)


# -- edge maps: hand-computed -----------------------------------------------------------------

def test_edge_of_a_square_is_its_perimeter():
    mask = np.zeros((8, 8), int)
    mask[2:6, 2:6] = 1
    expected = mask.copy()
    expected[3:5, 3:5] = 0  # the 2x2 interior is not an edge
    np.testing.assert_array_equal(edge_map(mask), expected)
    assert edge_map(mask).sum() == 4 * 4 - 4


def test_edge_between_two_labels_and_at_the_border():
    mask = np.zeros((4, 6), int)
    mask[:, :3] = 1  # touches the top, bottom and left border: no edge there
    mask[:, 3:] = 2  # touches label 1 along column 2|3
    expected = np.zeros((4, 6))
    expected[:, 2] = expected[:, 3] = 1
    np.testing.assert_array_equal(edge_map(mask), expected)


def test_edge_of_a_cube_in_3d():
    mask = np.zeros((5, 5, 5), int)
    mask[1:4, 1:4, 1:4] = 1
    edge = edge_map(mask)
    assert edge.sum() == 27 - 1 and edge[2, 2, 2] == 0  # every voxel but the centre
    assert edge_map(np.zeros((3, 3, 3), int)).sum() == 0


# -- prompts and guidance -----------------------------------------------------------------------

def test_prompt_tokens_and_null_embedding():
    assert tokenize("Benign  lesion, T1-post") == ["benign", "lesion", "t1", "post"]
    vocab = build_vocabulary(["benign lesion", "malignant lesion", None])
    assert vocab == ("benign", "lesion", "malignant")
    ids = encode(["benign lesion", None, "unseen"], vocab)
    assert ids[0, :2].tolist() == [2, 3] and (ids[1] == NULL).all() and ids[2, 0] == 1
    emb = PromptEncoder(len(vocab), 4)(ids)
    assert torch.equal(emb[1], torch.zeros(4))  # the null prompt embeds as zero
    assert not torch.equal(emb[0], torch.zeros(4))


def tiny_generator(**kw) -> ImageGenerator:
    config = GeneratorConfig(patch_size=(16, 16), network=TINY_NET, vocabulary=("benign",),
                             process=ProcessConfig(T=50, prediction="eps"), steps=5, **kw)
    model = ImageGenerator(config)
    for net in model.networks().values():
        randomise(net, seed=3, scale=0.1)
    return model


def square_masks(b: int = 2) -> torch.Tensor:
    labels = torch.zeros(b, 16, 16, dtype=torch.long)
    labels[:, 4:10, 5:12] = 1
    return labels


def test_guided_denoiser_is_the_cfg_combination():
    model = tiny_generator()
    labels, ids = square_masks(), encode(["benign", "benign"], ("benign",))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 30])
    s = 2.5
    got = model.guided(labels, ids, s)(x, t)
    from diffuseg.synthesis.generator import edges_of
    full = model.denoiser(x, t, model.condition(labels, edges_of(labels)), emb=model.prompt(ids))
    plain = model.denoiser(x, t, model.condition(labels, torch.zeros(2, 1, 16, 16)),
                           emb=torch.zeros(2, model.config.prompt_dim))
    torch.testing.assert_close(got, plain + s * (full - plain), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.guided(labels, ids, 1.0)(x, t), full)


def test_generation_is_deterministic_for_a_seed():
    model = tiny_generator()
    labels, ids = square_masks(), encode(["benign", None], ("benign",))

    def draw(seed):
        return model.sample(labels, ids, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 1, 16, 16) and a.abs().max() <= 1.0 + 1e-6


def test_bad_guidance_or_steps_are_refused():
    model = tiny_generator()
    labels, ids = square_masks(1), encode([None], ())
    with pytest.raises(ConfigError, match="guidance"):
        model.sample(labels, ids, guidance=float("nan"))
    with pytest.raises(ConfigError, match="steps"):
        model.sample(labels, ids, steps=51)


def test_intensity_scaling_round_trip():
    config = GeneratorConfig(intensity_lo=(10.0,), intensity_hi=(200.0,))
    image = np.array([[[10.0, 105.0], [200.0, 150.0]]], np.float32)
    np.testing.assert_allclose(to_unit(image, config), [[[-1, 0], [1, 0.47368422]]], atol=1e-6)
    np.testing.assert_array_equal(from_unit(to_unit(image, config), config), image)


# -- new masks ---------------------------------------------------------------------------------

def test_mask_sources_and_provenance():
    a = np.zeros((3, 12, 12), int)
    a[0, 2:6, 2:6] = 1
    a[1, 3:8, 3:8] = 1  # overlaps rater 0
    a[2, 4:5, 4:5] = 1
    pool = MaskPool(["c0"], [a])
    rng = np.random.default_rng(0)
    for _ in range(20):
        draw = pool.merge(rng)
        r0, r1 = draw.provenance["raters"]
        want = np.maximum(a[r0], a[r1]) if draw.provenance["op"] == "union" else \
            np.minimum(a[r0], a[r1])
        np.testing.assert_array_equal(draw.mask, want)
    real = pool.real(rng)
    assert real.provenance["source"] == "real" and real.case_id == "c0"
    np.testing.assert_array_equal(real.mask, a[real.provenance["rater"]])
    with pytest.raises(ConfigError, match="segmentor"):
        pool.draw("model", rng)
    assert parse_sources("real, elastic") == ("real", "elastic")
    with pytest.raises(ConfigError, match="--masks"):
        parse_sources("real,blur")


def test_elastic_deformation_keeps_labels_and_zero_alpha_is_identity():
    mask = np.zeros((20, 20), int)
    mask[5:15, 6:12] = 2
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(elastic_deform(mask, rng, alpha=0.0, sigma=3.0), mask)
    warped = elastic_deform(mask, rng, alpha=4.0, sigma=3.0)
    assert set(np.unique(warped)) <= {0, 2} and not np.array_equal(warped, mask)
    assert abs(int((warped > 0).sum()) - 60) < 30  # a smooth warp moves the outline, not the area


# -- image statistics --------------------------------------------------------------------------

def test_two_sample_accuracy_separates_only_different_sets():
    rng = np.random.default_rng(0)
    same_a = [rng.normal(100, 10, (1, 24, 24)) for _ in range(30)]
    same_b = [rng.normal(100, 10, (1, 24, 24)) for _ in range(30)]
    smooth = [gaussian_filter(rng.normal(100, 10, (1, 24, 24)), (0, 2, 2)) for _ in range(30)]
    assert two_sample_accuracy(same_a, same_b)["accuracy"] < 0.75
    assert two_sample_accuracy(same_a, smooth)["accuracy"] > 0.95
    stats = intensity_statistics(same_a, same_a)["channels"][0]
    assert stats["intersection"] == pytest.approx(1.0) and stats["wasserstein"] == 0.0


# -- the written dataset and mixing ----------------------------------------------------------

@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("syn") / "phantom", n_cases=10,
                                 size=16, n_raters=3, seed=0)


@pytest.fixture(scope="module")
def generator_dir(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "gen"
    return train_generator(phantom, out, network=TINY_NET, steps=3,
                           process=ProcessConfig(T=50, prediction="eps"),
                           train=GeneratorTrainConfig(max_steps=3, batch_size=2))


def test_generator_sees_only_the_training_split(phantom, generator_dir):
    model = load_generator(generator_dir)
    splits = load_splits(phantom)
    assert sorted(model.config.source_cases) == sorted(splits["train"])
    assert not set(model.config.source_cases) & set(splits["val"] + splits["test"])


def test_synthetic_dataset_passes_check_and_records_provenance(generator_dir, tmp_path):
    out = tmp_path / "syn"
    summary = synthesize(generator_dir, out, 5, masks="real,merge,elastic", seed=2)
    report = check_dataset(out)
    assert report.ok, report.format()
    info = json.loads((out / "dataset.json").read_text())
    assert info["synthetic"]["source_cases"] and info["numTraining"] == 5
    provenance = json.loads((out / "provenance.json").read_text())
    assert set(provenance) == {f"syn_{i:05d}" for i in range(5)}
    assert {p["source"] for p in provenance.values()} <= {"real", "merge", "elastic"}
    assert sum(summary.sources.values()) == 5
    splits = json.loads((out / "splits.json").read_text())
    assert splits["val"] == [] and splits["test"] == [] and len(splits["train"]) == 5
    again = tmp_path / "again"
    synthesize(generator_dir, again, 5, masks="real,merge,elastic", seed=2)
    for case in Dataset.open(out).cases:  # same seed, same images
        np.testing.assert_array_equal(case.load().image,
                                      Dataset.open(again).case(case.case_id).load().image)
    with pytest.raises(DataError, match="not empty"):
        synthesize(generator_dir, out, 2)


def test_synthesize_refuses_to_write_into_its_source(phantom, tmp_path):
    with pytest.raises(DataError, match="overlaps"):
        synthesize(phantom, phantom / "inside", 2, generator_dir=tmp_path / "g")


def test_mixing_never_uses_held_out_cases(phantom, generator_dir, tmp_path):
    from diffuseg.data.loader import batches, load_examples
    from diffuseg.synthesis.mixing import load_synthetic
    from diffuseg.training.start import build_config

    out = synthesize(generator_dir, tmp_path / "syn", 4, masks="real").root
    config = build_config(None, [f"data.synthetic={out}", "data.synthetic_ratio=1.0",
                                 "data.augment=false", "train.batch_size=4"], dataset=phantom)
    splits = load_splits(phantom)
    synthetic = load_synthetic(config, splits, n_raters=3)
    assert len(synthetic) == 4 and all(ex.raters.shape[0] == 3 for ex in synthetic)
    real = load_examples(Dataset.open(phantom), splits["train"], config)
    batch = next(batches(real, config, seed=0, synthetic=synthetic))
    images = {ex.image.tobytes() for ex in synthetic}
    assert all(img.numpy().tobytes() in images for img in batch["image"])  # ratio 1: all synthetic
    leaky = {"train": splits["train"][:1], "val": splits["train"][1:], "test": []}
    with pytest.raises(DataError, match="holds out"):
        load_synthetic(config, leaky)
    with pytest.raises(ConfigError, match="synthetic_ratio"):
        build_config(None, ["data.synthetic_ratio=1.5"], dataset=phantom)


def test_cli_bad_mask_source_is_one_line(monkeypatch, capsys, generator_dir, tmp_path):
    from diffuseg.cli import main

    monkeypatch.setattr(sys, "argv", ["diffuseg", "synthesize", str(generator_dir), "-o",
                                      str(tmp_path / "o"), "--masks", "real,blur"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "\n" not in err


# -- learning (slow) ---------------------------------------------------------------------------

def brightest_k_dice(image: np.ndarray, mask: np.ndarray) -> float:
    """A fixed segmentor for the phantom, whose lesion is its brightest structure: the k
    brightest pixels after light smoothing, k = the mask's area."""
    k = int((mask > 0).sum())
    smooth = gaussian_filter(image[0].astype(np.float64), 1.0)
    pred = smooth >= np.sort(smooth.ravel())[-k]
    return 2 * float((pred & (mask > 0)).sum()) / (pred.sum() + k)


@pytest.mark.slow
def test_generated_lesions_follow_the_conditioning_mask(tmp_path):
    torch.set_num_threads(1)
    root = write_phantom_dataset(tmp_path / "ph", 24, size=32, seed=0)
    gen = train_generator(root, tmp_path / "gen", steps=20,
                          network=NetworkConfig(channels=(16, 32), attention_levels=(False, False)),
                          train=GeneratorTrainConfig(max_steps=400, batch_size=16, lr=1e-3))
    out = synthesize(gen, tmp_path / "syn", 16, masks="real,elastic", seed=1).root
    scores, chance = [], []
    for case in Dataset.open(out).cases:
        data = case.load()
        if data.raters[0].any():
            scores.append(brightest_k_dice(data.image, data.raters[0]))
            chance.append(float((data.raters[0] > 0).mean()))
    real = [brightest_k_dice(c.load().image, c.load().raters[0]) for c in Dataset.open(root).cases
            if c.load().raters[0].any()]
    assert np.mean(real) > 0.6  # the fixed segmentor works on real phantom images
    assert np.mean(scores) > 0.5 and np.mean(scores) > 5 * np.mean(chance), (scores, chance)
