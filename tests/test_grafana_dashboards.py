"""Grafana as code, checked without services: the committed dashboards are what grafana/generate.py
builds, every panel queries the provisioned datasource with SQL on its dashboard's schema only
(`cassandra` for the market, `pipeline_health` for health), and the provisioning files read only
settings .env.example defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from grafana import generate
from include.health.checks import HEALTH_TABLES
from include.names import BRIDGE_SCHEMA, HEALTH_SCHEMA
from include.tables import BRIDGE_TABLES

REPO = Path(__file__).resolve().parent.parent
PROVISIONING = REPO / "grafana" / "provisioning"
DATASOURCE_FILE = PROVISIONING / "datasources" / "postgres.yaml"
PROVIDER_FILE = PROVISIONING / "dashboards" / "provider.yaml"
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE_FILE = REPO / "docker-compose.yaml"

# Grafana's provisioning expands $NAME, ${NAME} and $__env{NAME}
_ENV_REF = re.compile(r"\$__env\{([A-Za-z_]\w*)\}|\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")
# a relation a query reads: FROM/JOIN <name>, not a function call such as EXTRACT(EPOCH FROM now())
_RELATION = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z_][\w.]*)\b(?!\s*\()", re.IGNORECASE)
# FROM inside EXTRACT(field FROM source) names no relation
_EXTRACT = re.compile(r"\bEXTRACT\s*\(\s*\w+\s+FROM\b", re.IGNORECASE)
_CTE = re.compile(r"(?:\bWITH(?:\s+RECURSIVE)?|,)\s*([A-Za-z_]\w*)\s+AS\s*\(", re.IGNORECASE)
# what each dashboard may read
READABLE = {
    generate.MARKET_UID: {f"{BRIDGE_SCHEMA}.{name}" for name in BRIDGE_TABLES} | {f"{BRIDGE_SCHEMA}.bridge_watermarks"},
    generate.HEALTH_UID: {f"{HEALTH_SCHEMA}.{name}" for name in HEALTH_TABLES},
}


def _dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(generate.DASHBOARDS_DIR.glob("*.json"))}


def _panels(board: dict) -> list[dict]:
    """The dashboard's visualization panels (rows are layout only; a collapsed row nests its panels)."""
    out = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels") or [])
        else:
            out.append(panel)
    return out


def _env_refs(text: str) -> set[str]:
    return {a or b or c for a, b, c in _ENV_REF.findall(text)}


def _env_example_names() -> set[str]:
    return {line.split("=", 1)[0].strip() for line in ENV_EXAMPLE.read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")}


def _relations(sql: str) -> set[str]:
    sql = _EXTRACT.sub("EXTRACT(", sql)
    return {name.lower() for name in _RELATION.findall(sql)} - {cte.lower() for cte in _CTE.findall(sql)}


# --------------------------------------------------------------------------- generated JSON


def test_committed_dashboards_equal_a_fresh_generation():
    problems = generate.check()
    assert not problems, "grafana/dashboards is stale; run `python grafana/generate.py`:\n" + "\n\n".join(problems)


def test_check_reports_edited_missing_and_stale_files(tmp_path):
    generate.write(tmp_path)
    assert generate.check(tmp_path) == []
    name = f"{generate.MARKET_UID}.json"
    (tmp_path / name).write_text((tmp_path / name).read_text().replace("Latest prices", "Edited by hand"))
    (tmp_path / "leftover.json").write_text("{}")
    problems = generate.check(tmp_path)
    assert any(p.startswith(f"{name}: differs") and "Edited by hand" in p for p in problems), problems
    assert any(p.startswith("leftover.json") for p in problems), problems
    (tmp_path / name).unlink()
    assert f"{name}: missing" in generate.check(tmp_path)


def test_check_exits_non_zero_on_a_difference(tmp_path, monkeypatch, capsys):
    assert generate.main(["--check"]) == 0
    monkeypatch.setattr(generate, "DASHBOARDS_DIR", tmp_path)
    assert generate.main(["--check"]) == 1
    assert "missing" in capsys.readouterr().err


def test_generation_is_stable():
    assert generate.rendered() == generate.rendered()


def test_the_market_dashboard_is_there_with_its_variables():
    board = _dashboards()[generate.MARKET_UID]
    assert board["uid"] == generate.MARKET_UID
    assert board["title"] == "Binance market (from Cassandra)"
    assert board["time"]["to"] == "now" and "timepicker" in board
    variables = {v["name"]: v for v in board["templating"]["list"]}
    symbol = variables["symbol"]
    assert symbol["type"] == "query" and symbol["multi"] and symbol["includeAll"]
    # the candlestick follows a symbol and an interval the user picks, from what the bridge holds
    candle, interval = variables["candle_symbol"], variables["kline_interval"]
    assert candle["type"] == interval["type"] == "query" and not candle["multi"]
    assert "FROM cassandra.klines" in candle["query"] and "$candle_symbol" in interval["query"]
    for variable in (symbol, candle, interval):
        # a loose index scan (one probe per value), never SELECT DISTINCT over the whole table
        assert variable["query"].startswith("WITH RECURSIVE") and "DISTINCT" not in variable["query"]


def test_the_candlesticks_read_only_the_time_range_by_the_bridge_key():
    """(symbol, interval, open_time) is the bridge's primary key: equality on the first two and a range
    on the third is one index range, whatever the table holds (30 days of 1-minute candles)."""
    from include.tables import BRIDGE_TABLES

    (candles,) = [p for p in generate.panels() if p.type == "candlestick"]
    assert BRIDGE_TABLES["klines"].primary_key == ("symbol", "interval", "open_time")
    assert "symbol = '$candle_symbol'" in candles.raw_sql and "interval = '$kline_interval'" in candles.raw_sql
    assert "$__timeFilter(open_time)" in candles.raw_sql
    assert "${candle_symbol}" in candles.title and "${kline_interval}" in candles.title


def test_the_market_dashboard_charts_aggregate_trades():
    panels = [p for p in generate.panels() if _relations(p.raw_sql) == {"cassandra.agg_trades"}]
    assert len(panels) == 1 and "$__timeFilter(time)" in panels[0].raw_sql


# --------------------------------------------------------------------------- panels and their SQL


def test_every_panel_queries_the_provisioned_datasource():
    for uid, board in _dashboards().items():
        for panel in _panels(board):
            assert panel.get("datasource", {}).get("uid") == generate.DATASOURCE_UID, f"{uid}: {panel['title']}"
            assert panel.get("targets"), f"{uid}: panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == generate.DATASOURCE_UID, f"{uid}: {panel['title']}"
                assert target["datasource"]["type"] == generate.DATASOURCE_TYPE, f"{uid}: {panel['title']}"
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == generate.DATASOURCE_UID, f"{uid}: ${variable['name']}"


def test_every_panel_has_sql():
    for board in _dashboards().values():
        for panel in _panels(board):
            for target in panel["targets"]:
                assert target.get("rawQuery") is True and target.get("editorMode") == "code", panel["title"]
                assert target.get("rawSql", "").strip().upper().startswith(("SELECT", "WITH")), panel["title"]
                assert target.get("format") in ("time_series", "table"), panel["title"]


def test_panel_specs_are_what_the_dashboards_hold():
    """panels() (what the integration test runs) and the committed JSON are the same queries."""
    boards = _dashboards()
    specs = generate.panels()
    assert len({(s.dashboard_uid, s.title) for s in specs}) == len(specs), "two panels share a title"
    for spec in specs:
        matches = [p for p in _panels(boards[spec.dashboard_uid]) if p["title"] == spec.title]
        assert len(matches) == 1, f"panel {spec.title!r} not in {spec.dashboard_uid}.json"
        panel = matches[0]
        assert panel["type"] == spec.type
        assert [(t["rawSql"], t["format"]) for t in panel["targets"]] == [(spec.raw_sql, spec.format)]
    assert sum(len(_panels(b)) for b in boards.values()) == len(specs)


@pytest.mark.parametrize("spec", generate.panels(), ids=lambda s: s.title)
def test_panel_sql_reads_only_its_dashboards_schema(spec):
    relations = _relations(spec.raw_sql)
    readable = READABLE[spec.dashboard_uid]
    assert relations, f"{spec.title}: no table found in its SQL"
    assert relations <= readable, f"{spec.title} reads {sorted(relations - readable)}, outside its dashboard's schema"


def test_variable_queries_read_only_the_bridge_schema():
    for var in generate.variables():
        if var.kind == "query":
            relations = _relations(var.query)
            assert relations and relations <= READABLE[var.dashboard_uid], f"${var.name} reads {sorted(relations)}"


def test_every_dashboard_has_a_readable_schema_and_panels():
    assert {d.uid for d in generate.DASHBOARDS} == set(READABLE)
    for spec in generate.DASHBOARDS:
        assert any(p.dashboard_uid == spec.uid for p in generate.panels()), f"{spec.uid} has no panel"


def test_the_health_dashboard_shows_what_the_issue_lists():
    """States, retained WAL, lag per topic, freshness per stage, end-to-end latency."""
    board = _dashboards()[generate.HEALTH_UID]
    assert board["title"] == "Pipeline health" and board["time"]["to"] == "now"
    read = set()
    for spec in (p for p in generate.panels() if p.dashboard_uid == generate.HEALTH_UID):
        read |= {name.split(".", 1)[1] for name in _relations(spec.raw_sql)}
    assert {"checks", "connector_states", "slot_states", "stream_lag", "freshness", "stream_batches"} <= read
    by_title = {p["title"]: p for p in _panels(board)}
    assert by_title["Retained WAL"]["fieldConfig"]["defaults"]["unit"] == "bytes"
    assert "slot_name" in by_title["Retained WAL"]["targets"][0]["rawSql"]
    assert "topic AS metric" in by_title["Stream lag per topic"]["targets"][0]["rawSql"]
    assert "stage AS metric" in by_title["Freshness per stage"]["targets"][0]["rawSql"]
    # a failed check is red
    states = json.dumps(by_title["Checks"]["fieldConfig"]["overrides"])
    assert '"FAILED": {"color": "red"' in states


@pytest.mark.parametrize("spec", generate.panels(), ids=lambda s: s.title)
def test_panel_spec_is_consistent(spec):
    assert spec.format in ("time_series", "table")
    if spec.format == "time_series":
        assert spec.columns[0] == "time", f"{spec.title}: a time series needs a time column"
        assert "$__time" in spec.raw_sql, f"{spec.title}: a time series should follow the time picker"
    if spec.type == "candlestick":
        assert {"time", "open", "high", "low", "close"} <= set(spec.columns)
    for column in spec.columns:
        if column == "time" and "$__timeGroupAlias(" in spec.raw_sql:
            continue  # the macro names its result "time"
        assert re.search(rf"\b{column}\b", spec.raw_sql), f"{spec.title}: column {column} is not in its SQL"


def test_panels_fit_the_grid_and_have_unique_ids():
    for uid, board in _dashboards().items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids {ids}"
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, f"{uid}: {panel['title']} overflows the grid"


# --------------------------------------------------------------------------- provisioning


def test_datasource_provisioning_uses_only_env_example_names():
    text = DATASOURCE_FILE.read_text()
    used = _env_refs(text)
    assert used, "the datasource should take its settings from the environment"
    unknown = sorted(used - _env_example_names())
    assert not unknown, f"{DATASOURCE_FILE.relative_to(REPO)} reads {unknown}, which .env.example does not define"


def test_provisioning_files_read_only_env_example_names():
    known = _env_example_names()
    for path in sorted(PROVISIONING.rglob("*.y*ml")):
        unknown = sorted(_env_refs(path.read_text()) - known)
        assert not unknown, f"{path.relative_to(REPO)} reads {unknown}, which .env.example does not define"


def test_datasource_is_the_read_only_grafana_role():
    sources = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"]
    assert len(sources) == 1
    ds = sources[0]
    assert ds["uid"] == generate.DATASOURCE_UID and ds["type"] == generate.DATASOURCE_TYPE
    assert ds["url"] == "${POSTGRES_HOST}:${POSTGRES_PORT}"
    assert ds["user"] == "${GRAFANA_DB_USER}"
    assert ds["jsonData"]["database"] == "${POSTGRES_DB}"
    assert ds["jsonData"]["sslmode"] == "disable"
    assert ds["jsonData"]["timescaledb"] is False
    assert ds["secureJsonData"] == {"password": "${GRAFANA_DB_PASSWORD}"}
    assert "password" not in ds and "password" not in ds["jsonData"], "the password belongs in secureJsonData"


def test_dashboard_provider_reads_the_mounted_folder():
    providers = yaml.safe_load(PROVIDER_FILE.read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    assert providers[0]["type"] == "file"
    volumes = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]["volumes"]
    mounts = dict(v.split(":")[:2] for v in volumes if isinstance(v, str))
    assert mounts.get("./grafana/dashboards") == "/var/lib/grafana/dashboards"
    assert mounts.get("./grafana/provisioning") == "/etc/grafana/provisioning"
