"""Fast checks of the training parts: config validation, prompts and jitter, the split, the cache, the loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelperfect.storage import LocalStore
from pixelperfect.training.cache import CachedEmbedding, EmbeddingCache
from pixelperfect.training.data import (
    TargetSpec,
    component_prompts,
    jitter_boxes,
    low_res_shape,
    plan_data,
    split_by_image,
)
from pixelperfect.training.finetune import sam_loss
from pixelperfect.training.recipe import TrainConfig
from tests.training.conftest import train_settings


def _config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {"source": "imgs", "out": "out", "gt_masks": "masks", "model": "sam_tiny"}
    return TrainConfig(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "grabcut"}, "cannot be fine-tuned"),
        ({"gt_masks": None}, "needs targets"),
        ({"targets_from_run": "r", "min_consistency_iou": 0.5}, "not both"),
        ({"gt_masks": None, "targets_from_run": "r"}, "--min-consistency-iou"),
        ({"gt_masks": None, "targets_from_run": "r", "min_consistency_iou": 1.5}, "min_consistency_iou"),
        ({"lr": 0.0}, "lr"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"epochs": 0}, "epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"batch_size": True}, "batch_size"),
        ({"annotations_format": "xml"}, "annotations_format"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_identity_hash_ignores_schedule_and_runtime_only() -> None:
    base = _config()
    assert replace(base, max_steps=500, epochs=3, resume=True, cache_url="x", run="n").identity_hash() == (
        base.identity_hash()
    )
    assert replace(base, lr=2e-3).identity_hash() != base.identity_hash()
    assert replace(base, seed=1).identity_hash() != base.identity_hash()
    assert TrainConfig.from_dict(base.as_dict()) == base
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({**base.as_dict(), "bogus": 1})


def test_component_prompts_keep_large_components_with_their_own_masks() -> None:
    mask = np.zeros((100, 120), bool)
    mask[10:30, 10:40] = True  # 600 px
    mask[60:90, 70:110] = True  # 1200 px
    mask[2:5, 100:103] = True  # 9 px: dropped
    boxes, masks = component_prompts(mask, min_area=50)
    assert sorted(map(tuple, boxes.tolist())) == [(10, 10, 40, 30), (70, 60, 110, 90)]
    assert masks.shape == (2, 100, 120)
    assert sorted(int(m.sum()) for m in masks) == [600, 1200]
    empty_boxes, empty_masks = component_prompts(np.zeros((8, 8), bool), 0)
    assert empty_boxes.shape == (0, 4) and empty_masks.shape == (0, 8, 8)


def test_box_jitter_only_enlarges_by_at_most_shift_and_clips() -> None:
    boxes = np.array([[50.0, 40.0, 80.0, 70.0], [0.0, 0.0, 10.0, 10.0]])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        out = jitter_boxes(boxes, 20, rng, (100, 90))
        grow = (out - boxes) * np.array([-1, -1, 1, 1])
        assert (out[:, [0, 1]] >= 0).all() and (out[:, 2] <= 90).all() and (out[:, 3] <= 100).all()
        assert (grow[0] >= 0).all() and (grow[0] <= 20).all()
        seen.update(grow[0].astype(int).tolist())
    assert seen == set(range(21))  # every shift in 0..20 occurs
    assert np.array_equal(jitter_boxes(boxes, 0, rng, (100, 90)), boxes)


def test_split_is_by_image_seeded_and_never_empty() -> None:
    specs = [TargetSpec(f"k{i:02d}") for i in range(10)]
    train, val = split_by_image(specs, 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8
    assert {s.key for s in train}.isdisjoint({s.key for s in val})
    again = split_by_image(list(reversed(specs)), 0.2, seed=0)
    assert [s.key for s in again[1]] == [s.key for s in val]  # order of listing does not matter
    assert [s.key for s in split_by_image(specs, 0.2, seed=5)[1]] != [s.key for s in val]
    assert [len(side) for side in split_by_image(specs[:2], 0.9, seed=0)] == [1, 1]


def test_low_res_frame_matches_sam_resizing() -> None:
    assert low_res_shape((256, 256), 256) == (64, 64)
    assert low_res_shape((1024, 1024), 1024) == (256, 256)
    assert low_res_shape((512, 1024), 1024) == (128, 256)  # long side to 1024, the rest is padding


def test_plan_splits_only_images_with_a_prompt(train_phantoms: Path, tmp_path: Path) -> None:
    config = _config(source=str(train_phantoms / "images"), gt_masks=str(train_phantoms / "masks"), out="o")
    plan = plan_data(config, train_settings(tmp_path))
    positives = sum(1 for p in (train_phantoms / "masks").glob("*.png") if _mask_has_pixels(p))
    assert plan.summary["source_images"] == 24
    assert plan.summary["images_with_targets"] == positives == len(plan.train) + len(plan.val)
    assert len(plan.val) == round(positives * 0.2)
    assert plan.summary["targets"]["kind"] == "ground-truth masks"


def _mask_has_pixels(path: Path) -> bool:
    import cv2

    return bool((cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0).sum() > 250)


def test_cache_roundtrip_keys_and_counts(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    emb = CachedEmbedding(torch.randn(64, 16, 16), (256, 200), (256, 200))
    cache = EmbeddingCache(store, checkpoint_hash="c" * 64, variant_hash="v1", precision="fp32", memory_bytes=10**6)
    assert cache.get("a" * 64) is None
    stored = cache.put("a" * 64, emb)
    assert stored.features.dtype == torch.float16
    assert torch.equal(cache.get("a" * 64).features, stored.features)  # type: ignore[union-attr]
    fresh = EmbeddingCache(store, checkpoint_hash="c" * 64, variant_hash="v1", precision="fp32", memory_bytes=0)
    got = fresh.get("a" * 64)
    assert got is not None and torch.equal(got.features, stored.features) and got.original_size == (256, 200)
    assert fresh.stats.as_dict() == {"hits": 1, "memory_hits": 0, "store_hits": 1, "misses": 0, "puts": 0}
    assert cache.stats.as_dict() == {"hits": 1, "memory_hits": 1, "store_hits": 0, "misses": 1, "puts": 1}
    for other in ({"checkpoint_hash": "d" * 64}, {"variant_hash": "v2"}, {"precision": "bf16"}):
        kwargs = {"checkpoint_hash": "c" * 64, "variant_hash": "v1", "precision": "fp32", **other}
        assert EmbeddingCache(store, memory_bytes=0, **kwargs).get("a" * 64) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision"):
        EmbeddingCache(store, checkpoint_hash="c", variant_hash="v", precision="fp8", memory_bytes=0)


def test_cache_memory_layer_is_bounded(tmp_path: Path) -> None:
    one = CachedEmbedding(torch.zeros(8, 4, 4), (64, 64), (64, 64))  # 256 B as float16
    cache = EmbeddingCache(
        LocalStore(tmp_path), checkpoint_hash="c", variant_hash="v", precision="fp32", memory_bytes=600
    )
    for i in range(4):
        cache.put(f"{i:064d}", one)
    assert cache._held <= 600 and len(cache._memory) == 2
    cache.get(f"{0:064d}")
    assert cache.stats.store_hits == 1  # evicted from memory, still in the store


def test_loss_prefers_the_right_mask_and_trains_the_iou_head() -> None:
    target = torch.zeros(1, 16, 16)
    target[0, 4:12, 4:12] = 1.0
    good = torch.where(target > 0, 8.0, -8.0)[:, None].repeat(1, 3, 1, 1)
    bad = -good
    iou_right = torch.ones(1, 3)
    assert sam_loss(good, iou_right, target, 1.0) < 0.01
    assert sam_loss(bad, iou_right, target, 0.0) > 1.0
    mixed = torch.cat([bad[:, :1], good[:, 1:2], bad[:, 2:]], dim=1)
    assert sam_loss(mixed, torch.tensor([[0.0, 1.0, 0.0]]), target, 1.0) < 0.01  # min over candidates
    assert sam_loss(mixed, torch.ones(1, 3), target, 1.0) > 0.5  # the IoU head must know which is right
    logits = torch.zeros(1, 3, 16, 16, requires_grad=True)
    sam_loss(logits, torch.zeros(1, 3), target, 1.0).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_progress_line_for_status() -> None:
    from pixelperfect.training.tracking import describe_progress

    assert describe_progress({"phase": "queued"}) == "queued"
    assert describe_progress({"phase": "encoding", "images_loaded": 3, "images": 9}) == "encoding: 3/9 images"
    line = describe_progress(
        {
            "phase": "training",
            "step": 12,
            "total_steps": 40,
            "epoch": 3,
            "loss": 0.5,
            "val_dice": 0.25,
            "best_val_dice": 0.3,
            "val_dice_before": 0.1,
        }
    )
    assert line == "training: step 12/40, epoch 3, loss 0.5000, val Dice 0.2500 (best 0.3000, before 0.1000)"
    assert describe_progress({"phase": "failed", "error": "boom"}) == "failed: boom"
