"""The notebook API (``import pixelperfect as pp``): runs, their results as DataFrames, masks and figures, and
the report's comparisons — see docs/python-api.md. Loaded on first use of ``pp.<name>``."""

from pixelperfect.api.handle import MaskMissingError, Run
from pixelperfect.api.notebook import compare, findings, plan, run, runs, submit

__all__ = ["MaskMissingError", "Run", "compare", "findings", "plan", "run", "runs", "submit"]
