"""Phantom DICOM archives for the DICOMweb tests."""

from __future__ import annotations

from pathlib import Path

PHI = {"PatientName": "Doe^Jane^Secret", "PatientBirthDate": "19700402", "PatientID": "MRN-7734-SECRET"}


def dicom_phantoms(out: Path, n: int, seed: int, size: int = 256, *, phi: bool = False) -> list[Path]:
    """``n`` phantom DICOMs (CR and DX alternating) under ``out/images``; with ``phi`` each also carries a patient
    name, birth date and ID (``PHI`` values, the ID made unique per image) for hygiene tests. RSNA labels in
    ``out/labels.csv`` name images by the file stem; ``out/labels_pid.csv`` by the DICOM PatientID."""
    import pydicom

    from pixelperfect.synthetic.phantoms import write_phantoms

    write_phantoms(out, n, seed=seed, size=size, fmt="dicom")
    paths = sorted((out / "images").glob("*.dcm"))
    pids = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        if phi:
            ds.PatientName, ds.PatientBirthDate = PHI["PatientName"], PHI["PatientBirthDate"]
            ds.PatientID = f"{PHI['PatientID']}-{path.stem}"
            ds.save_as(path, enforce_file_format=True)
        pids[path.stem] = str(ds.PatientID)
    lines = (out / "labels.csv").read_text().splitlines()
    renamed = [lines[0]] + [pids[line.split(",", 1)[0]] + "," + line.split(",", 1)[1] for line in lines[1:]]
    (out / "labels_pid.csv").write_text("\n".join(renamed) + "\n")
    return paths
