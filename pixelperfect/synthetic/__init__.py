"""Synthetic data with exactly known answers: phantom chest radiographs with their masks and labels
(``phantoms``), and the same films stored as archive DICOMs, one transfer syntax each (``archive_phantoms``).
Tests, the demo and the benchmarks use it; no production path does."""
