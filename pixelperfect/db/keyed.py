"""Many image rows by key or id, in a form the query planner cannot get wrong on a growing table (issue 24).

``WHERE run_id = :run AND key IN (1,600 keys)`` is planned on the table's statistics. Right after a million rows
were inserted and before anything analyzed them, PostgreSQL believes the run holds a few hundred rows and reads
*all* of them through ``ix_images_run_status_progress`` (``run_id`` alone), comparing each with the 1,600 keys:
60-95 s a statement at a million rows, where 1,600 lookups of the unique ``(run_id, key)`` index take
milliseconds. ``id IN (...)`` has the same trap: with stale statistics the planner may read the whole table.

On PostgreSQL the conditions here are therefore:

* by id: ``id = ANY(ARRAY(SELECT unnest(:ids)))``. The array is an init-plan, computed once, that the planner
  sizes at a handful of elements whatever the statistics say, so the only plan it finds worth having is a lookup of
  the primary key per element.
* by key: ``id = ANY(ARRAY(SELECT x.id FROM unnest(:keys) AS u(key) CROSS JOIN LATERAL (SELECT id FROM images WHERE
  run_id = :run AND key = u.key LIMIT 1) x))``. The lateral subquery with its ``LIMIT`` cannot be flattened into a
  join, so it runs once per key, and a lookup with both columns of the unique ``(run_id, key)`` index is one index
  descent; then the same primary-key lookups as above. No plan in which one scan of the run is compared with the
  list exists any more.

The one case left to the statistics is a run the last ``ANALYZE`` did not see at all (it was created after it): the
planner then believes the run holds one row, and either index is as good to it as the other. The producer
analyzes ``images`` after the first chunk of a new run and after its registration
(:func:`pixelperfect.db.keyed.analyze_images`), so a run's statistics exist while its workers claim.

SQLite plans ``run_id = ? AND key IN (?, ...)`` with the unique index (equality on both of its columns beats one,
with or without ``ANALYZE``) and ``id IN (...)`` with rowid lookups; its forms stay as they are (see
tests/db/test_hot_plans.py for both engines' plans).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, Text, and_, any_, bindparam, func, select, text, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased

from pixelperfect.db.models import Image


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def by_ids(session: Session, column: Any, ids: Sequence[int]) -> Any:
    """``column`` (an integer key column: ``Image.id``, ``SegObject.image_id``, ...) is one of ``ids``."""
    values = [int(i) for i in ids]
    if not _postgres(session):
        return column.in_(values)
    array = bindparam(None, values, type_=ARRAY(Integer))
    ids_once = select(func.unnest(array)).scalar_subquery()
    return column == any_(func.array(ids_once))


def by_selected(session: Session, column: Any, ids: Any) -> Any:
    """``column`` is one of the ids ``ids`` (a SELECT of one integer column) returns: on PostgreSQL the same
    init-plan array as :func:`by_ids`, never a semi-join the planner could turn into a hash of the whole table."""
    if not _postgres(session):
        return column.in_(ids)
    return column == any_(func.array(ids.scalar_subquery()))


def by_keys(session: Session, *, run_id: int, keys: Sequence[str]) -> Any:
    """The images of run ``run_id`` named by ``keys``, each found through the unique ``(run_id, key)`` index."""
    values = [str(k) for k in keys]
    if not _postgres(session):
        return and_(Image.run_id == run_id, Image.key.in_(values))
    return Image.id == any_(func.array(_ids_of_keys(run_id, values)))


def _ids_of_keys(run_id: int, keys: list[str]) -> Any:
    wanted = func.unnest(bindparam(None, keys, type_=ARRAY(Text))).table_valued("key").render_derived(name="wanted")
    found = aliased(Image, name="found")
    one = (
        select(found.id.label("id"))
        .where(found.run_id == run_id, found.key == wanted.c.key)
        .limit(1)  # not flattened into a join: one index lookup per key
        .lateral("one")
    )
    return select(one.c.id).select_from(wanted).join(one, true()).scalar_subquery()


def analyze_images(session: Session) -> None:
    """PostgreSQL: ``ANALYZE images`` (a sample of 30,000 rows, well under a second at a million rows), so that the
    statements after a bulk registration plan on real numbers. SQLite: ``PRAGMA optimize`` (it runs ``ANALYZE``
    where it judges the statistics stale or missing, cheaply)."""
    if _postgres(session):
        session.execute(text("ANALYZE images"))
    else:
        session.execute(text("PRAGMA optimize"))
