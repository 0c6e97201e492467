"""Runbook links and suggested first actions for the worker's alerts, derived from the signal.

Every alert the worker publishes names a runbook (``docs/runbooks/<file>.md``: what it means, how to
confirm, how to mitigate, how to roll back) and one suggested first action, so that whoever is paged does
not start from a bare metric name. The Prometheus rules in ``deploy/prometheus/rules`` point at the same
runbooks. Pure: standard library only.

A signal this module does not know yet still gets the generic runbook (``README.md``, the index) rather
than no link: new signals must not make alerts fail.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "DEFAULT_RUNBOOK_BASE",
    "ROLLBACK_SIGNALS",
    "RUNBOOKS",
    "incident_level",
    "runbook_for",
    "suggested_action",
]

# Relative to the repository root; a deployment that serves the docs elsewhere passes its own base URL.
DEFAULT_RUNBOOK_BASE = "docs/runbooks/"

# signal -> runbook file in docs/runbooks/. Signals that share a cause share a runbook.
RUNBOOKS: Mapping[str, str] = {
    "volume": "volume.md",
    "latency": "latency.md",
    "error_rate": "error_rate.md",
    "fallback_rate": "degraded_responses.md",
    "empty_slate_rate": "degraded_responses.md",
    "freshness": "freshness.md",
    "candidate_source": "candidate_source.md",
    "funnel": "candidate_source.md",
    "engagement_ratio": "engagement_ratio.md",
    "error_budget_burn": "slo_burn.md",
    "dataset_arrival": "dataset_arrival.md",
    "feature_drift": "feature_drift.md",
    "feature_quality": "feature_quality.md",
    "score_drift": "score_drift.md",
    "score_collapse": "score_collapse.md",
    "position_score": "score_collapse.md",
    "diversity": "diversity.md",
    "popularity": "popularity.md",
    "release": "release_ctr.md",
    "labels": "label_ctr.md",
    "label_ctr": "label_ctr.md",
    "release_ctr": "release_ctr.md",
    "label_join": "label_join.md",
    "canary": "canary.md",
    "anomaly": "anomaly.md",
}
GENERIC_RUNBOOK = "README.md"

# Signals a bad model release can cause: their action names the rollback (lineage gives the target).
ROLLBACK_SIGNALS = frozenset(
    {
        "latency",
        "error_rate",
        "fallback_rate",
        "empty_slate_rate",
        "error_budget_burn",
        "feature_drift",
        "feature_quality",
        "score_drift",
        "score_collapse",
        "position_score",
        "diversity",
        "popularity",
        "label_ctr",
        "release_ctr",
        "canary",
    }
)

_ACTIONS: Mapping[str, str] = {
    "volume": "check the serving service's request logging and the producer of {topic} for this slice; "
    "a count of 0 is a silent segment (outage or logging break)",
    "latency": "find the slow stage (latency panel per stage) and scale it or shed load",
    "error_rate": "read the serving service's error logs for this slice and the deploy log",
    "fallback_rate": "find why the model path fails over to the fallback list (timeouts, errors)",
    "empty_slate_rate": "check candidate retrieval and filtering for this slice",
    "freshness": "check the feature pipeline that writes {what} (last successful run, backlog)",
    "candidate_source": "check the retrieval source {what} (health, index freshness, timeouts)",
    "funnel": "compare the funnel stages to find where candidates are lost",
    "engagement_ratio": "check the client/engagement logging pipeline (impressions per request fell)",
    "error_budget_burn": "treat as an outage of this series: confirm with the error_rate/latency alerts "
    "of the same model and version",
    "dataset_arrival": "check the batch job that lands {what} (scheduler, last run, row counts)",
    "feature_drift": "check whether {what} is stale or broken upstream before suspecting real drift",
    "feature_quality": "check the producer of {what} for nulls, type changes or defaults",
    "score_drift": "compare with the model's release history; confirm features are fresh",
    "score_collapse": "check the ranking model is loaded and receives features (constant scores)",
    "position_score": "check the re-ranking/business-rule stage that reorders the slate",
    "diversity": "check de-duplication in the slate assembly",
    "popularity": "check whether the model or a fallback serves only popular items",
    "labels": "compare CTR with the release history and the engagement logging",
    "label_ctr": "compare with the release history and the engagement logging of this slice",
    "release_ctr": "compare the new version's CTR with the previous one's on the same slice",
    "label_join": "check serving logging, request ids and co-partitioning of serving and engagement",
    "canary": "follow the canary verdict",
    "anomaly": "plot the series against its recent history, then follow the runbook of its signal ({what})",
}


def runbook_for(signal: str, base: str = DEFAULT_RUNBOOK_BASE) -> str:
    """The runbook of a signal: ``base`` + its file (the index for unknown signals).

    >>> runbook_for("freshness")
    'docs/runbooks/freshness.md'
    >>> runbook_for("something_new", base="https://runbooks.example.com/sm/")
    'https://runbooks.example.com/sm/README.md'
    """
    return base + RUNBOOKS.get(signal, GENERIC_RUNBOOK)


def suggested_action(signal: str, metric: str, key: Mapping[str, str]) -> str:
    """One suggested first action for an alert, naming the rollback when a release can be the cause.

    >>> key = {"model": "home-ranker", "model_version": "2026.11.24-1", "arm": "canary", "surface": "home"}
    >>> suggested_action("freshness", "p95_age_s.watch_minutes_7d", key)
    'check the feature pipeline that writes watch_minutes_7d (last successful run, backlog)'
    >>> print(suggested_action("score_drift", "psi", key))  # doctest: +NORMALIZE_WHITESPACE
    compare with the model's release history; confirm features are fresh; if it started with
    home-ranker 2026.11.24-1, roll back to the previous version on arm canary
    (see `stream-monitor lineage home-ranker`)
    """
    # The part of the metric after the first dot names the feature / source / dataset.
    what = metric.split(".", 1)[1] if "." in metric else metric
    if signal == "anomaly":  # its metric is "<signal>.<metric>" of the watched series
        what = metric.split(".", 1)[0]
    text = _ACTIONS.get(signal, "open the runbook and the dashboard for this series").format(
        what=what, topic="recs.serving"
    )
    model, version = key.get("model", "*"), key.get("model_version", "*")
    if signal in ROLLBACK_SIGNALS and model != "*":
        # Hook for the release registry: `stream-monitor lineage MODEL` names the version to go back to.
        arm = key.get("arm", "*")
        release = f"{model} {version}" if version != "*" else f"a release of {model}"
        on_arm = f" on arm {arm}" if arm != "*" else ""
        text += (
            f"; if it started with {release}, roll back to the previous version{on_arm} "
            f"(see `stream-monitor lineage {model}`)"
        )
    return text


def incident_level(signal: str, severity: str, metric: str, key: Mapping[str, str]) -> str:
    """The incident level (SEV1-SEV4, docs/alerting.md) of a worker alert, as the Prometheus rules label it.

    critical is SEV2 (page), warning SEV3 (ticket), info SEV4; a whole series gone silent (volume 0 with
    every segment dimension rolled up) is SEV1.

    >>> top = {"model": "m", "model_version": "*", "arm": "control", "surface": "home", "region": "*"}
    >>> incident_level("volume", "critical", "count", top)
    'SEV1'
    >>> incident_level("volume", "critical", "count", {**top, "region": "eu"})
    'SEV2'
    >>> incident_level("feature_drift", "warning", "psi.country", top)
    'SEV3'
    """
    if severity == "critical":
        segments = [v for d, v in key.items() if d not in ("model", "model_version", "arm", "surface")]
        if signal == "volume" and all(v == "*" for v in segments):
            return "SEV1"
        return "SEV2"
    return "SEV3" if severity == "warning" else "SEV4"
