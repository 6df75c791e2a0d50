"""raise_alert and resolve_alert: one open alert per kind and subject, logged when it opens and closes."""

import logging

import pytest

from fleet.alerts import raise_alert, resolve_alert
from fleet.models import Alert, AlertSeverity

pytestmark = pytest.mark.django_db


def open_alerts(kind: str = "cluster.down") -> list[Alert]:
    return list(Alert.objects.filter(kind=kind, resolved_at__isnull=True))


def test_raise_opens_alert_on_model_subject(fleet, caplog):
    cluster = fleet.clusters["aws-use1-a"]

    with caplog.at_level(logging.WARNING, logger="fleet.alerts"):
        alert = raise_alert("cluster.down", AlertSeverity.CRITICAL, cluster, "cluster aws-use1-a is down")

    assert alert.subject_type == "fleet.cluster"
    assert alert.subject_id == str(cluster.pk)
    assert alert.subject_label == "aws-use1-a"
    assert alert.severity == AlertSeverity.CRITICAL
    assert alert.resolved_at is None
    assert open_alerts() == [alert]
    assert "alert cluster.down (critical) raised on aws-use1-a" in caplog.text


def test_raise_twice_updates_message_without_duplicate(fleet):
    cluster = fleet.clusters["aws-use1-a"]
    first = raise_alert("cluster.down", AlertSeverity.WARNING, cluster, "3 failed reads")

    second = raise_alert("cluster.down", AlertSeverity.CRITICAL, cluster, "5 failed reads")

    assert second.pk == first.pk
    assert Alert.objects.count() == 1
    stored = Alert.objects.get()
    assert stored.message == "5 failed reads"
    assert stored.severity == AlertSeverity.CRITICAL


def test_same_kind_on_other_subject_is_separate(fleet):
    raise_alert("cluster.down", AlertSeverity.CRITICAL, fleet.clusters["aws-use1-a"], "down")
    raise_alert("cluster.down", AlertSeverity.CRITICAL, fleet.clusters["gcp-usw4-a"], "down")
    raise_alert("cluster.suspect", AlertSeverity.WARNING, fleet.clusters["aws-use1-a"], "suspect")

    assert len(open_alerts("cluster.down")) == 2
    assert len(open_alerts("cluster.suspect")) == 1


def test_resolve_closes_open_alert_once(fleet, caplog):
    cluster = fleet.clusters["aws-use1-a"]
    raise_alert("cluster.down", AlertSeverity.CRITICAL, cluster, "down")

    with caplog.at_level(logging.INFO, logger="fleet.alerts"):
        first = resolve_alert("cluster.down", cluster)
    second = resolve_alert("cluster.down", cluster)

    assert first is True
    assert second is False
    assert open_alerts() == []
    assert Alert.objects.get().resolved_at is not None
    assert "alert cluster.down on aws-use1-a resolved" in caplog.text


def test_raise_after_resolve_opens_new_alert(fleet):
    cluster = fleet.clusters["aws-use1-a"]
    first = raise_alert("cluster.down", AlertSeverity.CRITICAL, cluster, "down")
    resolve_alert("cluster.down", cluster)

    second = raise_alert("cluster.down", AlertSeverity.CRITICAL, cluster, "down again")

    assert second.pk != first.pk
    assert Alert.objects.count() == 2
    assert open_alerts() == [second]


def test_tuple_subject(db):
    alert = raise_alert("failover.blocked", AlertSeverity.CRITICAL, ("placements.deployment", 7, "acme/chat"), "no")

    assert (alert.subject_type, alert.subject_id, alert.subject_label) == ("placements.deployment", "7", "acme/chat")
    assert resolve_alert("failover.blocked", ("placements.deployment", 7)) is True


@pytest.mark.parametrize(
    ("kind", "severity", "subject", "message", "field"),
    [
        ("", "critical", ("fleet.cluster", 1, "a"), "down", "kind"),
        ("cluster.down", "fatal", ("fleet.cluster", 1, "a"), "down", "severity"),
        ("cluster.down", "critical", ("fleet.cluster", 1, "a"), "", "message"),
        ("cluster.down", "critical", ("fleet.cluster",), "down", "subject"),
        ("cluster.down", "critical", "aws-use1-a", "down", "subject"),
    ],
)
def test_invalid_alert_rejected_without_write(db, kind, severity, subject, message, field):
    with pytest.raises(ValueError, match=field):
        raise_alert(kind, severity, subject, message)

    assert Alert.objects.count() == 0
