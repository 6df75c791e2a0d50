"""The audit trail is append-only: the model, the queryset and, on PostgreSQL, the database reject changes."""

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models import ProtectedError

from compliance.models import AuditEvent, AuditTrailImmutableError
from compliance.services import record_event
from placements.services import delete_deployment


@pytest.fixture
def event(ops):
    return record_event(actor=ops, action="cluster.cordoned", subject=("fleet.cluster", 7), reason="Maintenance.")


def stored(event: AuditEvent) -> AuditEvent:
    return AuditEvent.objects.get(pk=event.pk)


def test_saving_existing_event_raises(event):
    event.reason = "Rewritten."

    with pytest.raises(AuditTrailImmutableError, match="append-only"):
        event.save()

    assert stored(event).reason == "Maintenance."


def test_deleting_event_raises(event):
    with pytest.raises(AuditTrailImmutableError, match="append-only"):
        event.delete()

    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_queryset_update_raises(event):
    with pytest.raises(AuditTrailImmutableError, match=r"QuerySet\.update"):
        AuditEvent.objects.filter(pk=event.pk).update(reason="Rewritten.")

    assert stored(event).reason == "Maintenance."


def test_queryset_delete_raises(event):
    with pytest.raises(AuditTrailImmutableError, match=r"QuerySet\.delete"):
        AuditEvent.objects.all().delete()

    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_bulk_update_raises(event):
    event.reason = "Rewritten."

    with pytest.raises(AuditTrailImmutableError, match=r"QuerySet\.bulk_update"):
        AuditEvent.objects.bulk_update([event], ["reason"])

    assert stored(event).reason == "Maintenance."


def test_base_manager_update_raises(event):
    with pytest.raises(AuditTrailImmutableError):
        AuditEvent._base_manager.filter(pk=event.pk).update(reason="Rewritten.")


def test_new_events_still_append(event, ops):
    record_event(actor=ops, action="cluster.uncordoned", subject=("fleet.cluster", 7), reason="Done.")

    assert AuditEvent.objects.filter(subject_id="7").count() == 2


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the append-only trigger exists only on PostgreSQL"
)


@postgresql_only
def test_raw_sql_update_rejected(event):
    with pytest.raises(DatabaseError, match="append-only: UPDATE"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("UPDATE compliance_auditevent SET reason = 'Rewritten.' WHERE id = %s", [event.pk])

    assert stored(event).reason == "Maintenance."


@postgresql_only
def test_raw_sql_delete_rejected(event):
    with pytest.raises(DatabaseError, match="append-only: DELETE"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM compliance_auditevent WHERE id = %s", [event.pk])

    assert AuditEvent.objects.filter(pk=event.pk).exists()


@postgresql_only
def test_raw_sql_insert_allowed(event):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO compliance_auditevent (created_at, actor_label, action, subject_type, subject_id, reason)"
            " VALUES (now(), 'sql', 'test.inserted', 'x', '1', '')"
        )

    assert AuditEvent.objects.filter(action="test.inserted").count() == 1


def test_trail_survives_deleted_deployment(acme_chat, acme_member):
    deployment_id = acme_chat.pk

    delete_deployment(actor=acme_member, deployment=acme_chat, reason="No longer needed.")

    events = AuditEvent.objects.filter(subject_type="placements.deployment", subject_id=str(deployment_id))
    assert set(events.values_list("action", flat=True)) >= {"deployment.created", "deployment.deleted"}


def test_deleting_acting_user_protected(event, ops):
    with pytest.raises(ProtectedError):
        ops.delete()

    assert stored(event).actor == ops
