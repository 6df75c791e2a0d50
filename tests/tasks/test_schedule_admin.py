"""Beat schedules in the admin: who may edit them, and the role permissions behind it."""

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from compliance.roles import AUDITOR, COMPLIANCE, OPS
from tests.tasks.conftest import make_schedule

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_celery_beat_periodictask_changelist"


@pytest.fixture
def reconcile():
    return make_schedule("reconcile clusters", "placements.reconcile_clusters", 15, expire_seconds=15)


def change_form(schedule: PeriodicTask, interval: IntervalSchedule) -> dict:
    """The change form of ``schedule`` as the admin posts it, with ``interval`` chosen."""
    return {
        "name": schedule.name,
        "regtask": "",
        "task": schedule.task,
        "enabled": "on",
        "description": "",
        "interval": interval.pk,
        "crontab": "",
        "solar": "",
        "clocked": "",
        "start_time_0": "",
        "start_time_1": "",
        "expires_0": "",
        "expires_1": "",
        "expire_seconds": "30",
        "args": "[]",
        "kwargs": "{}",
        "queue": "",
        "exchange": "",
        "routing_key": "",
        "priority": "",
        "headers": "{}",
    }


def group_permissions(role: str) -> set[str]:
    rows = Group.objects.get(name=role).permissions.values_list("content_type__app_label", "codename")
    return {f"{app}.{codename}" for app, codename in rows}


# Roles.


def test_ops_may_edit_schedules_and_read_runs():
    permissions = group_permissions(OPS)

    assert "django_celery_beat.change_periodictask" in permissions
    assert "django_celery_beat.add_intervalschedule" in permissions
    assert "tasks.view_taskrun" in permissions
    assert "django_celery_beat.change_intervalschedule" not in permissions
    assert "django_celery_beat.delete_periodictask" not in permissions


def test_auditor_only_views_schedules():
    permissions = group_permissions(AUDITOR)

    assert "django_celery_beat.view_periodictask" in permissions
    assert "django_celery_beat.view_intervalschedule" in permissions
    assert not any(name.startswith("django_celery_beat.") and ".view_" not in name for name in permissions)


def test_compliance_has_no_schedule_permissions():
    permissions = group_permissions(COMPLIANCE)

    assert not any(name.startswith("django_celery_beat.") for name in permissions)


# Editing.


def test_superuser_changes_schedule_interval(superuser_client, reconcile):
    slower = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    url = reverse("admin:django_celery_beat_periodictask_change", args=[reconcile.pk])

    response = superuser_client.post(url, change_form(reconcile, slower))

    assert response.status_code == 302
    reconcile.refresh_from_db()
    assert reconcile.interval == slower


def test_ops_changes_schedule_interval(client, ops, reconcile):
    client.force_login(ops)
    slower = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    url = reverse("admin:django_celery_beat_periodictask_change", args=[reconcile.pk])

    response = client.post(url, change_form(reconcile, slower))

    assert response.status_code == 302
    reconcile.refresh_from_db()
    assert reconcile.interval == slower


def test_ops_disables_schedule_with_action(client, ops, reconcile):
    client.force_login(ops)

    response = client.post(reverse(CHANGELIST), {"action": "disable_tasks", "_selected_action": [reconcile.pk]})

    assert response.status_code == 302
    reconcile.refresh_from_db()
    assert not reconcile.enabled


def test_auditor_reads_schedules(client, auditor, reconcile):
    client.force_login(auditor)

    changelist = client.get(reverse(CHANGELIST))
    change = client.get(reverse("admin:django_celery_beat_periodictask_change", args=[reconcile.pk]))

    assert changelist.status_code == 200
    assert change.status_code == 200


def test_auditor_cannot_change_schedule(client, auditor, reconcile):
    client.force_login(auditor)
    slower = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    url = reverse("admin:django_celery_beat_periodictask_change", args=[reconcile.pk])

    response = client.post(url, change_form(reconcile, slower))

    assert response.status_code == 403
    reconcile.refresh_from_db()
    assert reconcile.interval != slower


def test_auditor_gets_no_schedule_actions(client, auditor, reconcile):
    client.force_login(auditor)

    page = client.get(reverse(CHANGELIST))
    client.post(reverse(CHANGELIST), {"action": "disable_tasks", "_selected_action": [reconcile.pk]})

    assert b"disable_tasks" not in page.content
    assert b"run_tasks" not in page.content
    reconcile.refresh_from_db()
    assert reconcile.enabled
