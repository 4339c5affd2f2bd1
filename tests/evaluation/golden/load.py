"""Load the golden fixture's rows (``runs.json``, written by ``make_golden.py``) into a migrated database."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, insert, text

from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import Annotation, Image, Run, Segment
from pixelperfect.db.session import session_scope

HERE = Path(__file__).resolve().parent
TABLES = (Run, Image, Segment, Annotation)


def load_golden(url: str) -> None:
    """Upgrade ``url`` to head and insert every row of the fixture with its original ids."""
    upgrade(url)
    data = json.loads((HERE / "runs.json").read_text())
    with session_scope(url) as session:
        for model in TABLES:
            table = model.__table__
            dates = {c.name for c in table.columns if isinstance(c.type, DateTime)}

            def row(r: dict[str, Any], dates: set[str] = dates) -> dict[str, Any]:
                return {k: datetime.fromisoformat(v) if k in dates and v else v for k, v in r.items()}

            rows = [row(r) for r in data[table.name]]
            if rows:
                session.execute(insert(table), rows)
            if session.get_bind().dialect.name == "postgresql":  # ids were given: move the sequences past them
                session.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), coalesce(max(id), 0) + 1, false)"
                        f" FROM {table.name}"
                    )
                )
