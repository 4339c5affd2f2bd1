"""The score stage: a model's ``Prediction`` -> one ``SegmentRecord`` per prompt (``segments.score_prediction``):
the model's scores, the mask's component boxes and consistency under jitter (``overlap``), accuracy against the
ground truth (``metrics``: Dice, IoU, NSD, HD95, the RSNA detection metric)."""
