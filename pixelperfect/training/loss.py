"""The fine-tuning loss both trainers share (SAM v1: ``finetune``, SAM 2: ``sam2_finetune``), in a module of its
own so that neither trainer imports the other."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Smoothing of the soft Dice loss (MONAI's default order of magnitude): an empty target and prediction score 0.
DICE_SMOOTH = 1e-5


def sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, iou_weight: float) -> torch.Tensor:
    """``logits``: ``(P, 3, h, w)`` candidate mask logits; ``iou_pred``: ``(P, 3)``; ``target``: ``(P, h, w)`` in
    [0, 1]. Mean over prompts of the best candidate's Dice + BCE, plus ``iou_weight`` x MSE of the IoU head."""
    t = target[:, None].expand_as(logits)
    prob = logits.sigmoid()
    inter = (prob * t).sum((-1, -2))
    dice_loss = 1.0 - (2.0 * inter + DICE_SMOOTH) / (prob.sum((-1, -2)) + t.sum((-1, -2)) + DICE_SMOOTH)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean((-1, -2))
    mask_loss = (dice_loss + bce).min(dim=1).values.mean()
    if iou_weight == 0:
        return mask_loss
    with torch.no_grad():
        pred, truth = logits > 0, t > 0.5
        union = (pred | truth).sum((-1, -2)).float()
        true_iou = torch.where(union > 0, (pred & truth).sum((-1, -2)).float() / union.clamp(min=1), 1.0)
    return mask_loss + iou_weight * F.mse_loss(iou_pred, true_iou)
