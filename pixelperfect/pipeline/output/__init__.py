"""What leaves the pipeline as bytes: lossless mask PNGs (``masks``) and DICOM Segmentation objects (``dicomseg``,
highdicom). No I/O: arrays and bytes in, bytes out."""
