"""Saved preprocessing variants: a TOML file of ``name = "spec"`` that ``submit --variant NAME`` accepts.

``pixelperfect tune --save NAME`` writes the best setting there (default file ``pixelperfect-variants.toml`` in the
working directory, ``--variants-file`` elsewhere)::

    # written by pixelperfect tune
    [variants]
    "gauss_best" = "gaussian(k=5)"

A saved name never shadows a built-in variant (``raw``, ``clahe``, ...): saving one is refused, and a file that
holds one is refused when read. A run records each variant's spec and hash, so changing a saved spec later never
changes what an existing run computed (re-submitting that run then reports the different configuration).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import tomllib

from pixelperfect.pipeline.preprocess.variants import BUILTIN_VARIANTS, parse_variant

DEFAULT_VARIANTS_FILE = "pixelperfect-variants.toml"
_NAME_RE = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,63}$")  # as parse_variant's names
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # a bare word: a name to look up, not a spec


class VariantsFileError(ValueError):
    """An unreadable or invalid variants file, or a name that cannot be saved; the message names the file."""


def load_variants(path: str | Path) -> dict[str, str]:
    """``{name: spec}`` from ``path``; ``{}`` when the file does not exist. Every entry is checked: a built-in
    name, a bad name or a spec that does not parse raises :class:`VariantsFileError` naming it."""
    file = Path(path)
    if not file.exists():
        return {}
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VariantsFileError(f"cannot read variants file {file}: {exc}") from None
    table = data.get("variants", {})
    if not isinstance(table, dict):
        raise VariantsFileError(f'{file}: [variants] must be a table of name = "spec"')
    out: dict[str, str] = {}
    for name, spec in table.items():
        _check(name, spec, file)
        out[name] = spec
    return out


def save_variant(path: str | Path, name: str, spec: str) -> bool:
    """Write ``name = spec`` into the file (created when missing; other entries kept, sorted). Returns whether an
    entry of that name was replaced. A built-in name, a bad name or a bad spec raises :class:`VariantsFileError`."""
    file = Path(path)
    _check(name, spec, file)
    saved = load_variants(file)
    replaced = name in saved and saved[name] != spec
    saved[name] = spec
    lines = ["# preprocessing variants for `pixelperfect submit --variant NAME` (written by pixelperfect tune)",
             "[variants]", *(f"{json.dumps(n)} = {json.dumps(s)}" for n, s in sorted(saved.items()))]  # fmt: skip
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(file)  # a reader never sees half a file
    return replaced


def resolve_variants(texts: Sequence[str], path: str | Path) -> list[str]:
    """``--variant`` values with saved names replaced by ``name=spec``; built-in names and specs pass through.

    A bare word that is neither a built-in variant, nor a preprocessing step, nor saved in the file raises
    :class:`VariantsFileError` naming the file it looked in.
    """
    saved: dict[str, str] | None = None
    out = []
    for text in texts:
        word = text.strip()
        if word in BUILTIN_VARIANTS or not _PLAIN_NAME.match(word):
            out.append(text)
            continue
        if saved is None:
            saved = load_variants(path)
        if word in saved:
            out.append(f"{word}={saved[word]}")
            continue
        try:
            parse_variant(word)  # a step without parameters, e.g. "sobel"... or nothing known
        except ValueError:
            known = ", ".join(sorted(saved)) or "none"
            raise VariantsFileError(
                f"unknown variant {word!r}: not built-in ({', '.join(BUILTIN_VARIANTS)}), not a step, and not saved "
                f"in {path} (saved there: {known})"
            ) from None
        out.append(text)
    return out


def suggested_name(spec: str) -> str:
    """A variant name from a spec: ``gaussian(k=5)`` -> ``gaussian_k5``; ``clahe(clip=2.5,tile=8)`` ->
    ``clahe_clip2.5_tile8``."""
    name = re.sub(r"[^a-z0-9_.-]+", "_", spec.lower().replace("=", "")).strip("_")
    return name[:64] or "tuned"


def _check(name: object, spec: object, file: Path) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise VariantsFileError(f"{file}: variant name {name!r} must be lower-case letters, digits, '_', '.', '-'")
    if name in BUILTIN_VARIANTS:
        raise VariantsFileError(
            f"{file}: {name!r} is a built-in variant; a saved variant may not shadow it (choose another name)"
        )
    if not isinstance(spec, str):
        raise VariantsFileError(f"{file}: variant {name!r} must be a spec string, got {spec!r}")
    try:
        parse_variant(f"{name}={spec}")
    except ValueError as exc:
        raise VariantsFileError(f"{file}: variant {name!r}: {exc}") from None
