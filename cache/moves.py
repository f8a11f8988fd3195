"""The parts of an import beyond evaluations: blind answers and search runs, added inside the import's transaction
without counting anything twice.

An answer or a run has no natural key, so one already here is recognised by its content and its time (an answer:
its evaluation, verdict, session and time; a run: its model, request and start): importing a file again, or the
export of a cache into itself, adds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .schema import BlindAnswerRow, SearchLinkRow, SearchRunRow
from .transfer import ImportedAnswer, ImportedRun

__all__ = ["Moved", "add_answers", "add_runs"]


@dataclass(frozen=True)
class Moved:
    """How much of each part an export wrote, or an import stored."""

    evaluations: int
    blind_answers: int = 0
    search_runs: int = 0
    cost_tables: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"evaluations": self.evaluations, "blind_answers": self.blind_answers,
                "search_runs": self.search_runs, "cost_tables": self.cost_tables}


def _utc(when: datetime | None) -> datetime | None:
    """A time as the database keeps it: naive, in UTC (SQLite hands back naive times)."""
    if when is None:
        return None
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


def add_answers(session: Session, answers: Sequence[ImportedAnswer], ids: Sequence[int | None]) -> int:
    """The answers not yet here, each on the evaluation ``ids[answer.evaluation]`` (its row in this database)."""
    wanted = sorted({i for a in answers if (i := ids[a.evaluation]) is not None})
    here: set[tuple[int | None, str, str | None, datetime | None]] = {
        (r.evaluation_id, r.answer, r.session, _utc(r.created_at))
        for r in session.scalars(select(BlindAnswerRow).where(BlindAnswerRow.evaluation_id.in_(wanted)))}
    added = 0
    for answer in answers:
        evaluation_id = ids[answer.evaluation]
        when = _utc(answer.created_at) or _utc(datetime.now(UTC))
        fact = (evaluation_id, answer.answer, answer.session, when)
        if evaluation_id is None or fact in here:
            continue
        session.add(BlindAnswerRow(evaluation_id=evaluation_id, answer=answer.answer, session=answer.session,
                                   created_at=when))
        here.add(fact)
        added += 1
    return added


def _run_key(model: str, request: dict[str, Any], started: datetime | None) -> tuple[str, str, datetime | None]:
    return model, json.dumps(request, sort_keys=True), _utc(started)


def add_runs(session: Session, runs: Sequence[ImportedRun], ids: Sequence[int | None]) -> int:
    """The runs not yet here, with links to the evaluations they linked (their rows in this database)."""
    here = {_run_key(r.model, r.request, r.started_at) for r in session.scalars(select(SearchRunRow))}
    added = 0
    for run in runs:
        key = _run_key(run.model, run.request, run.started_at)
        if key in here:
            continue
        row = SearchRunRow(model=run.model, request=run.request, result=run.result,
                           started_at=key[2] or _utc(datetime.now(UTC)), finished_at=_utc(run.finished_at))
        session.add(row)
        session.flush()
        for evaluation_id in sorted({i for place in run.evaluations if (i := ids[place]) is not None}):
            session.add(SearchLinkRow(run_id=row.id, evaluation_id=evaluation_id))
        here.add(key)
        added += 1
    return added
