"""The shared builder of the dashboards: specs of panels and variables, the SQL query model, the styles
both dashboards use, and a DashboardSpec built with grafana-foundation-sdk and rendered as stable JSON.

A dashboard module (market.py, health.py) declares a DashboardSpec, its VariableSpecs and PanelSpecs;
generate.py hands them to `render`. Every panel and variable reads the provisioned datasource
`binance-postgres` (the read-only Grafana role).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.builders import barchart, candlestick, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

# grafana/provisioning/datasources/postgres.yaml provisions this datasource (a test checks they agree)
DATASOURCE_UID = "binance-postgres"
DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE = dashboard_models.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)

Format = Literal["time_series", "table"]


@dataclass(frozen=True)
class PanelSpec:
    """One panel: where it goes, what it shows, and the single copy of its SQL.

    `columns` are the result columns the visualization needs (the integration test checks them).
    `style` sets the visualization's own options on the SDK builder for `type`.
    """

    dashboard_uid: str
    title: str
    type: str
    raw_sql: str
    format: Format
    columns: tuple[str, ...]
    description: str = ""
    row: str = ""
    width: int = 12
    height: int = 8
    style: Callable[[Any], Any] = field(default=lambda panel: panel, repr=False, compare=False)


@dataclass(frozen=True)
class VariableSpec:
    """A dashboard variable: a SQL query variable, or a constant (`query` is then its value)."""

    dashboard_uid: str
    name: str
    label: str
    query: str
    kind: Literal["query", "constant"] = "query"
    multi: bool = False
    include_all: bool = False


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    time_from: str = "now-6h"
    refresh: str = "1m"


class SQLQuery(cogvariants.Dataquery):
    """A code-mode query of Grafana's PostgreSQL datasource (the SDK ships no model for it)."""

    def __init__(self, ref_id: str, raw_sql: str, fmt: Format) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format = fmt

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": DATASOURCE.to_json(),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }


class SQLQueryBuilder(cogbuilder.Builder[SQLQuery]):
    def __init__(self, raw_sql: str, fmt: Format, ref_id: str = "A") -> None:
        self._internal = SQLQuery(ref_id, raw_sql, fmt)

    def build(self) -> SQLQuery:
        return self._internal


def sql(text: str, **parts: str) -> str:
    """SQL as written in the source, without its indentation; each {name} in it becomes parts[name].

    The dashboards name their schema this way ({bridge}, {health}), from include/names.py, never literally.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line)
    out = "\n".join(line[indent:] for line in lines)
    for name, value in parts.items():
        out = out.replace("{" + name + "}", value)
    return out


# --------------------------------------------------------------------------- styles both dashboards use
# tables keep the order of their SQL (ORDER BY), so no sortBy anywhere


def thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=value, color=color) for value, color in steps])
    )


# seconds since the last change: fine up to two extract cycles, stale beyond ten minutes
AGE_THRESHOLDS = ((None, "green"), (120, "orange"), (600, "red"))
# commit -> Cassandra latency in seconds
LATENCY_THRESHOLDS = ((None, "green"), (10, "orange"), (60, "red"))


def fixed_colour(colour: str) -> list[dashboard_models.DynamicConfigValue]:
    return [dashboard_models.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})]


def legend_bottom() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def multi_tooltip() -> common_builders.VizTooltipOptions:
    return common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)


def dashed_thresholds() -> common_builders.GraphThresholdsStyleConfig:
    return common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)


def _colour_map(colours: dict[str, str]) -> dashboard_models.ValueMap:
    """Text values shown as they are, each in its colour."""
    results = {value: dashboard_models.ValueMappingResult(color=colour, index=i)
               for i, (value, colour) in enumerate(colours.items())}
    return dashboard_models.ValueMap(options=results)


def coloured_cells(colours: dict[str, str]) -> list[dashboard_models.DynamicConfigValue]:
    """A table column whose text values each get their colour as the cell's background."""
    return [
        dashboard_models.DynamicConfigValue(id_val="mappings", value=[_colour_map(colours)]),
        dashboard_models.DynamicConfigValue(id_val="custom.cellOptions",
                                            value=common.TableColoredBackgroundCellOptions()),
    ]


def bytes_cells() -> list[dashboard_models.DynamicConfigValue]:
    return [dashboard_models.DynamicConfigValue(id_val="unit", value="bytes")]


def style_latency_series(p: timeseries.Panel) -> timeseries.Panel:
    """Commit -> Cassandra latency in seconds over time, with the latency thresholds dashed."""
    return (
        p.unit("s")
        .legend(legend_bottom())
        .tooltip(multi_tooltip())
        .show_points(common.VisibilityMode.AUTO)
        .thresholds(thresholds(*LATENCY_THRESHOLDS))
        .thresholds_style(dashed_thresholds())
    )


# --------------------------------------------------------------------------- building and rendering

_PANEL_BUILDERS: dict[str, Callable[[], Any]] = {
    "barchart": barchart.Panel,
    "candlestick": candlestick.Panel,
    "stat": stat.Panel,
    "table": table.Panel,
    "timeseries": timeseries.Panel,
}


def _variable(spec: VariableSpec) -> cogbuilder.Builder[dashboard_models.VariableModel]:
    if spec.kind == "constant":
        return dashboard_builders.ConstantVariable(spec.name).label(spec.label).value(spec.query)
    var = (
        dashboard_builders.QueryVariable(spec.name)
        .label(spec.label)
        .datasource(DATASOURCE)
        .query(spec.query)
        .refresh(dashboard_models.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(spec.multi)
        .include_all(spec.include_all)
    )
    if spec.include_all:
        var = var.current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
    return var


def _panel(spec: PanelSpec, panel_id: int) -> cogbuilder.Builder[dashboard_models.Panel]:
    if spec.type not in _PANEL_BUILDERS:
        raise ValueError(f"panel {spec.title!r}: no builder for panel type {spec.type!r}")
    builder = (
        _PANEL_BUILDERS[spec.type]()
        .id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DATASOURCE)
        .with_target(SQLQueryBuilder(spec.raw_sql, spec.format))
        .span(spec.width)
        .height(spec.height)
    )
    return spec.style(builder)


def build_dashboard(spec: DashboardSpec, variables: Sequence[VariableSpec],
                    panels: Sequence[PanelSpec]) -> dashboard_models.Dashboard:
    """The dashboard with its variables and panels, in their order; a row starts where a panel's `row` changes."""
    strays = [f"panel {p.title!r}" for p in panels if p.dashboard_uid != spec.uid]
    strays += [f"variable ${v.name}" for v in variables if v.dashboard_uid != spec.uid]
    if strays:
        raise ValueError(f"dashboard {spec.uid}: given {', '.join(strays)} of another dashboard")
    board = (
        dashboard_builders.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(list(spec.tags))
        .time(spec.time_from, "now")
        .refresh(spec.refresh)
        .timezone("browser")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .timepicker(dashboard_builders.TimePicker().refresh_intervals(["30s", "1m", "5m", "15m"]))
        .variables([_variable(v) for v in variables])
    )
    panel_id, row = 0, None
    for panel in panels:
        if panel.row and panel.row != row:
            panel_id += 1
            row = panel.row
            board = board.with_row(dashboard_builders.Row(row).id(panel_id))
        panel_id += 1
        board = board.with_panel(_panel(panel, panel_id))
    return board.build()


def render(spec: DashboardSpec, variables: Sequence[VariableSpec], panels: Sequence[PanelSpec]) -> str:
    """Stable JSON: sorted keys, two-space indentation, a final newline."""
    board = build_dashboard(spec, variables, panels)
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
