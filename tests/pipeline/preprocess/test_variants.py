"""Preprocessing steps: a known answer on a small array for each step, validation, specs and variants."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters.rank import entropy as skimage_entropy
from skimage.morphology import disk

from pixelperfect.pipeline.preprocess.steps import entropy_scale, rank_entropy
from pixelperfect.pipeline.preprocess.variants import (
    BUILTIN_VARIANTS,
    STEPS,
    Step,
    Variant,
    parse_step,
    parse_variant,
    to_uint8,
)

U8 = np.uint8


def step_image(width: int = 16, value: int = 255, at: int = 8) -> np.ndarray:
    """``(width, width) uint8``: 0 left of column ``at``, ``value`` from it on."""
    image = np.zeros((width, width), U8)
    image[:, at:] = value
    return image


def test_to_uint8_stretches_and_passes_uint8() -> None:
    image = np.array([[0, 1000], [2000, 4000]], np.uint16)
    assert to_uint8(image).tolist() == [[0, 64], [128, 255]]
    same = np.array([[3, 4]], U8)
    assert to_uint8(same) is same
    assert to_uint8(np.full((2, 2), 7.0)).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        to_uint8(np.zeros((2, 2, 3), U8))


def test_identity_and_minmax() -> None:
    image = np.array([[10, 20], [30, 40]], U8)
    assert parse_step("identity")(image).tolist() == [[10, 20], [30, 40]]
    assert parse_step("minmax")(image).tolist() == [[0, 85], [170, 255]]
    assert parse_step("minmax")(np.full((3, 3), 9, U8)).max() == 0


def test_percentile_clips_full_precision_values() -> None:
    image = np.array([[0, 1, 2, 3, 4]], np.float32) * 1000
    assert parse_step("percentile(low=25,high=75)")(image).tolist() == [[0, 0, 128, 255, 255]]


def test_clahe_known_answer_and_brightness() -> None:
    # one tile, no clipping (each level holds a quarter < clip limit): CLAHE is the CDF look-up 255 * cdf(v)
    image = np.repeat(np.array([[0, 85, 170, 255]], U8), 64, axis=0).repeat(16, axis=1)
    out = parse_step("clahe(clip=100,tile=1)")(image)
    assert out[0, ::16].tolist() == [64, 128, 191, 255]
    bright = parse_step("clahe(clip=100,tile=1,brightness=30)")(image)
    assert bright[0, ::16].tolist() == [94, 158, 221, 255]  # saturates at 255


def test_gamma_and_hist_eq() -> None:
    assert parse_step("gamma(gamma=2)")(np.array([[0, 128, 255]], U8)).tolist() == [[0, 64, 255]]
    assert parse_step("gamma(gamma=0.5)")(np.array([[64]], U8)).tolist() == [[128]]
    image = np.array([[10, 20], [20, 30]], U8)
    assert parse_step("hist_eq")(image).tolist() == [[0, 170], [170, 255]]


def test_gaussian_impulse_response() -> None:
    image = np.zeros((5, 5), U8)
    image[2, 2] = 255
    out = parse_step("gaussian(k=3)")(image)  # OpenCV's 3-tap kernel is [1/4, 1/2, 1/4]
    assert out[1:4, 1:4].tolist() == [[16, 32, 16], [32, 64, 32], [16, 32, 16]]
    assert out.sum() == out[1:4, 1:4].sum()


def test_median_removes_salt() -> None:
    image = np.full((5, 5), 40, U8)
    image[2, 2] = 255
    assert (parse_step("median(k=3)")(image) == 40).all()
    assert np.array_equal(parse_step("median(k=1)")(image), image)


@pytest.mark.parametrize("spec", ["bilateral", "nlmeans(h=5,template=3,search=7)", "unsharp", "gaussian(k=5)"])
def test_smoothing_steps_keep_a_constant_image(spec: str) -> None:
    image = np.full((12, 12), 123, U8)
    assert (parse_step(spec)(image) == 123).all()


def test_bilateral_and_nlmeans_reduce_noise_but_keep_edges() -> None:
    rng = np.random.default_rng(0)
    clean = step_image(32, 200)
    noisy = np.clip(clean.astype(int) + rng.normal(0, 12, clean.shape), 0, 255).astype(U8)
    for spec in ("bilateral(d=5,sigma_color=60,sigma_space=5)", "nlmeans(h=20,template=3,search=9)"):
        out = parse_step(spec)(noisy).astype(int)
        assert np.abs(out - clean).mean() < np.abs(noisy.astype(int) - clean).mean()
        assert out[:, :6].mean() < 40 and out[:, -6:].mean() > 160


def test_unsharp_overshoots_at_an_edge() -> None:
    image = np.where(np.arange(10)[None, :].repeat(4, 0) < 5, 100, 150).astype(U8)
    row = parse_step("unsharp(sigma=1,amount=1)")(image)[0]
    assert row[0] == 100 and row[-1] == 150 and row[4] < 100 and row[5] > 150


def test_canny_blend_research_weights() -> None:
    image = step_image(16, 200)
    out = parse_step("canny_blend(alpha=0.3)")(image).astype(int)
    assert out[:, 10:].tolist() == [[60] * 6] * 16  # 0.3 * 200, no edge
    assert out[:, :6].max() == 0
    assert (np.abs(out[:, 7] - 178.5) <= 0.5).all()  # 0.3 * 0 + 0.7 * 255 on the edge
    assert (parse_step("canny_blend(alpha=1)")(image) == image).all()


def test_sobel_step_edge_is_255() -> None:
    out = parse_step("sobel")(step_image())
    assert out[0].tolist() == [0] * 7 + [255, 255] + [0] * 7
    assert parse_step("sobel(k=5)")(step_image()).max() == 255
    assert parse_step("sobel(scale=0.5)")(step_image()).max() == 128
    faint = step_image(value=40)
    assert parse_step("sobel(scale=1)")(faint).max() == 40 and parse_step("sobel")(faint).max() == 255


def test_log_is_zero_on_flat_and_peaks_beside_an_edge() -> None:
    assert parse_step("log")(np.full((9, 9), 77, U8)).max() == 0
    row = parse_step("log(sigma=2,scale=4)")(step_image(32, at=16))[0].astype(int)
    assert 200 <= row.max() <= 255 and row[0] < 5
    assert row[15] > 0 and row[16] > 0  # both sides of the edge
    assert parse_step("log(sigma=2)")(step_image(32, value=30, at=16)).max() == 255  # auto stretch


def test_entropy_known_answer_and_matches_skimage() -> None:
    image = np.zeros((5, 6), U8)
    image[:, 3:] = 1
    out = parse_step("entropy(radius=1)")(image)  # disk(1) is a 5-pixel cross
    two_to_one = -(0.8 * np.log2(0.8) + 0.2 * np.log2(0.2)) * 255 / np.log2(5)
    assert out[2, 2] == round(two_to_one) == 79 and out[2, 0] == 0
    assert out[0, 2] == round(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)) * 255 / np.log2(5))  # 4 in image
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, (37, 41), dtype=U8)
    noisy[:12] = 9
    for radius in (1, 2, 5, 7):
        expected = np.clip(skimage_entropy(noisy, disk(radius)) * entropy_scale(radius) + 0.5, 0, 255).astype(U8)
        assert np.array_equal(rank_entropy(noisy, radius), expected)


def test_rapmed_known_answer() -> None:
    image = np.full((5, 5), 100, U8)
    image[2, 2] = 150
    out = parse_step("rapmed(k=3)")(image)
    assert out[2, 2] == 200 and out[0, 0] == 100 and out[1, 1] == 100
    image[2, 2] = 250
    assert parse_step("rapmed")(image)[2, 2] == 255  # 2 * 250 - 100 clipped


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_step_maps_any_dtype_to_uint8_of_same_shape(name: str) -> None:
    rng = np.random.default_rng(2)
    for image in (rng.integers(0, 4096, (24, 20)).astype(np.uint16), rng.normal(0, 1, (24, 20)).astype(np.float32)):
        out = STEPS[name]()(image)
        assert out.dtype == U8 and out.shape == image.shape


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("gaussian(k=4)", ["gaussian", "k", "4"]),
        ("gaussian(k=0)", ["k", "0"]),
        ("gaussian(k=true)", ["k", "True"]),
        ("median(k=2.5)", ["median", "2.5"]),
        ("clahe(clip=0)", ["clahe", "clip", "0"]),
        ("clahe(tile=65)", ["tile", "65"]),
        ("gamma(gamma=-1)", ["gamma", "-1"]),
        ("percentile(low=60,high=40)", ["percentile", "high", "40"]),
        ("percentile(high=101)", ["high", "101"]),
        ("bilateral(d=0)", ["bilateral", "d", "0"]),
        ("nlmeans(template=9,search=7)", ["nlmeans", "search", "7"]),
        ("nlmeans(h=0)", ["nlmeans", "h", "0"]),
        ("unsharp(amount=-1)", ["unsharp", "amount", "-1"]),
        ("canny_blend(alpha=1.5)", ["canny_blend", "alpha", "1.5"]),
        ("canny_blend(low=0.6,high=0.5)", ["canny_blend", "high", "0.5"]),
        ("canny_blend(blur=2)", ["blur", "2"]),
        ("sobel(k=4)", ["sobel", "k", "4"]),
        ("log(sigma=0)", ["log", "sigma", "0"]),
        ("log(scale=-1)", ["log", "scale", "-1"]),
        ("entropy(radius=0)", ["entropy", "radius", "0"]),
        ("rapmed(k=1)", ["rapmed", "k", "1"]),
        ("gaussian(k=abc)", ["k", "abc"]),
        ("gaussian(q=3)", ["gaussian", "q"]),
        ("gaussian(3)", ["gaussian", "key=value"]),
        ("nosuch", ["nosuch", "known"]),
        ("Bad Step", ["Bad Step"]),
    ],
)
def test_bad_parameters_fail_at_construction_naming_the_value(spec: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_step(spec)
    for word in words:
        assert word in str(info.value)


def test_canonical_spec_and_hash() -> None:
    step = parse_step(" gaussian( sigma=1 , k=5 ) ")
    assert step.spec() == "gaussian(k=5,sigma=1.0)"
    assert parse_step("hist_eq").spec() == "hist_eq"
    variant = parse_variant("clahe")
    assert variant.spec == "clahe(brightness=30,clip=5.0,tile=8)"
    assert variant.spec_hash == "e38c6f768bcbd7a7"  # pinned: a changed hash splits comparable runs
    assert parse_variant("clahe(tile=8,clip=5,brightness=30)").spec_hash == variant.spec_hash
    assert parse_step("gaussian(k=3)") == parse_step("gaussian(k=3.0)")


def test_builtin_variants_parse_and_reproduce_the_research() -> None:
    assert set(BUILTIN_VARIANTS) >= {"raw", "clahe", "clahe_canny", "clahe_canny_entropy", "sobel", "log", "rapmed"}
    names = [step.name for step in parse_variant("clahe_canny_entropy").steps]
    assert names == ["clahe", "canny_blend", "entropy"]
    canny = parse_variant("clahe_canny").steps[1]
    assert canny.params() == {"alpha": 0.3, "low": 0.1, "high": 0.5, "blur": 3}
    rng = np.random.default_rng(3)
    image = rng.integers(0, 4096, (40, 48)).astype(np.uint16)
    for name in BUILTIN_VARIANTS:
        variant = parse_variant(name)
        assert isinstance(variant, Variant) and variant.name == name
        out = variant(image)
        assert out.dtype == U8 and out.shape == image.shape
        assert parse_variant(variant.spec).spec == variant.spec  # round trip


def test_named_and_anonymous_variants() -> None:
    named = parse_variant("smooth=gaussian(k=5)|clahe")
    assert named.name == "smooth" and named.spec == "gaussian(k=5,sigma=0.0)|clahe(brightness=0,clip=2.0,tile=8)"
    anonymous = parse_variant("gaussian(k=5)")
    assert anonymous.name == "v_" + anonymous.spec_hash[:8]
    with pytest.raises(ValueError, match="variant name"):
        parse_variant("Bad Name=gaussian")
    with pytest.raises(ValueError, match="empty"):
        parse_variant("  ")


def test_first_step_sees_full_precision() -> None:
    image = np.zeros((10, 10), np.uint16)
    image[:, 5:] = 1000
    image[0, 0] = 60000  # one hot pixel: a min-max stretch would crush the rest to ~4
    out = parse_variant("percentile(low=0,high=95)")(image)
    assert out[5, 7] == 255 and out[5, 2] == 0
    assert isinstance(STEPS["percentile"](), Step)
