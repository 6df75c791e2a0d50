"""The ``age`` template filter: ages below a minute stay visible."""

from datetime import UTC, datetime, timedelta

import pytest

from tasks.templatetags.mcm_time import age

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0 s"), (45, "45 s"), (119, "119 s"), (600, "10 min"), (3 * 3600, "3 h"), (5 * 86400, "5 d")],
)
def test_age_units(seconds, shown):
    assert age(NOW - timedelta(seconds=seconds), NOW) == shown


def test_age_of_nothing():
    assert age(None, NOW) == "-"
