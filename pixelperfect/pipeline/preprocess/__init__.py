"""The preprocess stage: a variant (``variants.Variant``, a spec of steps such as
``clahe(clip=2.0,tile=8)|gaussian(k=3)``) maps a greyscale array of any numeric type to a ``uint8`` image of the same
shape. ``steps`` holds the step base class and the edge and texture steps; ``tune`` searches a step's parameters,
``preview`` shows variants side by side."""
