"""The prompt stage: boxes from annotations and their seeded perturbations (``boxes``), user points and the automatic
point grid (``auto``). Boxes are XYXY pixel coordinates of the original image, ``x2``/``y2`` exclusive."""
