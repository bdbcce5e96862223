"""The Grafana dashboard asks only for what crdtd serves: every metric its panels and
variables query is one the endpoint exports, as rendered by `crdtd.daemon.metrics` from
a real node's stats (with ``metrics.variable_values`` on), not a list kept by hand.

Fast and unprivileged: it reads the JSON and renders one scrape in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtd.daemon.metrics import scrape_registry
from tests.daemon.stats import snapshot

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((REPO / "packaging" / "grafana" / "crdtd-dashboard.json").read_text())

# What a PromQL expression holds besides metric names, removed before names are read:
# strings (label values), label matchers, ranges and subquery steps, Grafana's
# variables, and the label lists of by/without/on/ignoring/group_left/group_right.
_NOT_NAMES = re.compile(
    r'"(?:[^"\\]|\\.)*"'
    r"|\{[^}]*\}"
    r"|\[[^\]]*\]"
    r"|\$\{?\w+\}?"
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}
# An identifier not followed by "(" (a function call) is a metric name.
_NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a ``label_values(...)`` query) reads."""
    bare = _NOT_NAMES.sub(" ", expr)
    bare = re.sub(r"\blabel_values\s*\(([^,)]*),[^)]*\)", r"\1", bare)  # (metric, label)
    bare = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", " ", bare)  # numbers, 1e3 too
    return {name for name in _NAME.findall(bare) if name.lower() not in _KEYWORDS}


def exported_series() -> dict[str, set[str]]:
    """The series names one scrape serves, by family: each sample's, and the family's
    by type (a counter as ``_total``, a histogram as ``_bucket``, ``_sum``,
    ``_count``), so a family with no sample in this snapshot still counts."""
    return {
        family.name: {sample.name for sample in family.samples}
        | {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        for family in scrape_registry(snapshot(values=True)).collect()
    }


EXPORTED = exported_series()


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside a collapsed row too."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries() -> Iterator[tuple[str, str]]:
    """``(where, expression)`` for each panel target and each query variable."""
    for panel in panels(DASHBOARD["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable ${variable['name']}", variable["query"]["query"]


QUERIES = list(queries())


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_every_query_reads_metrics_crdtd_exports(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = names - set().union(*EXPORTED.values())
    assert not unknown, f"{where}: crdtd exports no {sorted(unknown)}"


def test_every_crdtd_family_has_a_panel() -> None:
    """So a family the endpoint gains is graphed too, or this says it is not."""
    asked = set().union(*(metric_names(expr) for _, expr in QUERIES))
    unasked = {
        family
        for family, series in EXPORTED.items()
        if family.startswith("crdtd_") and not series & asked
    }
    assert unasked == set()


def test_panels_have_unique_ids_and_the_datasource_variable() -> None:
    every = list(panels(DASHBOARD["panels"]))
    assert len({panel["id"] for panel in every}) == len(every)
    for panel in every:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x="y"}[5m])))',
            {"a_bucket"},
        ),
        ("rate(a_sum[1h]) / rate(a_count[$__rate_interval])", {"a_sum", "a_count"}),
        ('label_values(crdtd_info{job=~"$job"}, instance)', {"crdtd_info"}),
        (
            'sum without (reason) (b_total{reason="bad_mac or c"}) > 1e3 and on(i) d',
            {"b_total", "d"},
        ),
    ],
)
def test_metric_names_reads_names_not_functions_labels_or_strings(
    expr: str, names: set[str]
) -> None:
    assert metric_names(expr) == names
