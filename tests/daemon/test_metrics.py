"""The families a scrape serves, rendered from a real node's stats without a server:
``crdtd_variable_value`` only when asked for, with every value, its labels escaped."""

from __future__ import annotations

import pytest
from prometheus_client.exposition import choose_encoder

from crdtd.daemon.metrics import scrape_registry
from tests.daemon.stats import VALUES, snapshot

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def scrape(stats: dict[str, object], accept: str = "") -> str:
    encoder, _ = choose_encoder(accept)
    return encoder(scrape_registry(stats)).decode()


def test_variable_values_are_off_by_default() -> None:
    stats = snapshot()
    assert "values" not in stats
    text = scrape(stats)
    assert "crdtd_variables 2.0" in text
    assert "crdtd_variable_value" not in text


def test_variable_values_give_each_counters_value() -> None:
    text = scrape(snapshot(values=True))
    assert "# TYPE crdtd_variable_value gauge" in text
    for variable, value in VALUES.items():
        assert f'crdtd_variable_value{{variable="{variable}"}} {value:.1f}\n' in text


@pytest.mark.parametrize("accept", ["", OPENMETRICS], ids=["text", "openmetrics"])
def test_label_values_are_escaped(accept: str) -> None:
    """No variable name needs it today (names are [A-Za-z0-9_.-]), but the encoder, not
    this code, writes the labels: a quote, backslash or newline cannot break a line."""
    stats = snapshot(values=True)
    stats["values"] = {'a"b\\c\nd': 1}
    assert 'crdtd_variable_value{variable="a\\"b\\\\c\\nd"} 1' in scrape(stats, accept)
