"""The window field codec: how a series and a metric are written into one flat aggregate key.

Every window aggregate is a map ``"<series>#<metric>" -> sum``. A *series* is the ``|``-joined values of
the topology's key dimensions (``model|version|arm|surface|<segments...>``); ``*`` in a dimension means
"rolled up over it", and the series ``*`` alone holds topology-wide counters (engagement, join health).
Dimension values are cleaned of both separators before they are joined (see ``SeriesKeyer``), so the
first ``#`` of a field name always ends its series; a metric may itself contain ``#``.

This module is the one place that knows the format; everything else builds and reads field names
through it.

>>> name = field_name(join_series(("m", "v1", "control", "home", "eu")), "n")
>>> name
'm|v1|control|home|eu#n'
>>> split_field(name)
('m|v1|control|home|eu', 'n')
>>> split_series("m|v1|control|home|eu")
('m', 'v1', 'control', 'home', 'eu')
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ALL",
    "ENGAGEMENT_SERIES",
    "OTHER",
    "SEP_METRIC",
    "SEP_SERIES",
    "clean_value",
    "field_name",
    "join_series",
    "metric_prefix",
    "series_of",
    "split_field",
    "split_series",
]

SEP_SERIES = "|"
SEP_METRIC = "#"
# The series of topology-wide counters, and the dimension value meaning "rolled up over this dimension".
ENGAGEMENT_SERIES = "*"
ALL = "*"
# The dimension value that values past a cardinality cap fold into.
OTHER = "other"


def join_series(values: Iterable[str]) -> str:
    """The series string of a tuple of dimension values.

    >>> join_series(("m", "*", "eu"))
    'm|*|eu'
    """
    return SEP_SERIES.join(values)


def split_series(series: str) -> tuple[str, ...]:
    """The dimension values of a series string (the inverse of :func:`join_series`).

    >>> split_series("m|*|eu")
    ('m', '*', 'eu')
    """
    return tuple(series.split(SEP_SERIES))


def field_name(series: str, metric: str) -> str:
    """The aggregate key of ``metric`` in ``series``.

    >>> field_name(ENGAGEMENT_SERIES, "eng.click")
    '*#eng.click'
    """
    return f"{series}{SEP_METRIC}{metric}"


def metric_prefix(series: str) -> str:
    """The prefix every field of ``series`` starts with (for scanning a window for one series).

    >>> "m|eu#n".startswith(metric_prefix("m|eu"))
    True
    """
    return series + SEP_METRIC


def split_field(name: str) -> tuple[str, str]:
    """``(series, metric)`` of an aggregate key; the metric is ``""`` when there is no separator.

    >>> split_field("m|eu#lat.total.12")
    ('m|eu', 'lat.total.12')
    >>> split_field("m|eu#sc.feat#1")
    ('m|eu', 'sc.feat#1')
    >>> split_field("legacy")
    ('legacy', '')
    """
    series, _, metric = name.partition(SEP_METRIC)
    return series, metric


def series_of(name: str) -> str:
    """The series part of an aggregate key.

    >>> series_of("m|eu#n")
    'm|eu'
    """
    return name.partition(SEP_METRIC)[0]


def clean_value(value: str) -> str:
    """A dimension value that cannot be mistaken for a separator or for the rolled-up marker.

    >>> clean_value("a|b#c"), clean_value("*")
    ('a_b_c', '_')
    """
    clean = value.replace(SEP_SERIES, "_").replace(SEP_METRIC, "_")
    return "_" if clean == ALL else clean
