"""Step-cost tables measured on other devices, for planning where a schedule will be deployed.

A step's cost depends on the architecture and the device, not on the weights: ``flux-dev-random``
on an H100 costs what FLUX.1-dev costs there. The project ships tables measured with
``benchmarks/step_costs.py`` (converted by ``benchmarks/cost_tables.py``); any file in the same
``CostTable`` JSON format works too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmpdiff.errors import FieldError, literal
from tmpdiff.pipelines.registry import get_model

if TYPE_CHECKING:  # imported where used: listing the shipped tables (the CLI's help) needs no torch
    from tmpdiff.measure.latency import CostTable
    from tmpdiff.steps.schedule import Schedule

__all__ = ["SHIPPED", "Prediction", "load_cost_table", "matching_tables", "prediction_label", "shipped_tables",
           "target_prediction"]

SHIPPED = Path(__file__).resolve().parents[1] / "costs"  # package data


def shipped_tables() -> list[str]:
    """Names of the tables the project ships, e.g. ``flux-dev-h100``."""
    return sorted(p.stem for p in SHIPPED.glob("*.json"))


def load_cost_table(name_or_path: str | Path, model: str) -> CostTable:
    """The table named (a shipped name or a JSON file), checked against ``model``'s architecture."""
    path = SHIPPED / f"{name_or_path}.json"
    if not path.exists():
        path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FieldError("costs", str(name_or_path), f"{{costs}} {{value}} is neither a shipped table "
                         f"({', '.join(shipped_tables())}) nor a JSON file")
    from tmpdiff.measure.latency import CostTable

    try:
        table = CostTable.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FieldError("costs", str(name_or_path), f"{{costs}} {{value}} is not a cost table: {literal(str(exc))}") \
            from None
    architecture = get_model(model).architecture
    if table.architecture != architecture:
        raise FieldError("costs", str(name_or_path), f"the cost table {{value}} ({{costs}}) was measured for the "
                         f"{literal(str(table.architecture))} architecture, not {model}'s {architecture}")
    table.target = True
    return table


def matching_tables(model: str) -> list[str]:
    """The shipped tables measured for ``model``'s architecture."""
    architecture = get_model(model).architecture
    return [name for name in shipped_tables()
            if json.loads((SHIPPED / f"{name}.json").read_text()).get("architecture") == architecture]


def prediction_label(table: CostTable) -> str:
    return f"predicted on {table.device_name}, from measured step costs"


@dataclass(frozen=True)
class Prediction:
    """A schedule's seconds and speed-up predicted on a table's device, from its measured step costs."""

    device: str | None
    seconds: float
    speedup: float
    label: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "seconds": round(self.seconds, 4), "speedup": round(self.speedup, 3),
                "label": self.label, "note": self.note}


def target_prediction(table: CostTable, reference: Schedule, schedule: Schedule) -> Prediction:
    """Seconds and speed-up of ``schedule`` predicted on the table's device, labelled as such."""
    seconds, base = table.predict(schedule), table.predict(reference)
    return Prediction(table.device_name, seconds, base / seconds, prediction_label(table), table.note)
