"""The background health page in the admin, /admin/tasks/taskrun/health/."""

from html.parser import HTMLParser

import pytest
from django.urls import reverse

from tasks.models import TaskRunStatus
from tests.tasks.conftest import make_run, make_schedule

pytestmark = pytest.mark.django_db

URL = "/admin/tasks/taskrun/health/"


class ScheduleRows(HTMLParser):
    """Collect the ``data-schedule`` rows of the page: their attributes, links and text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict] = {}
        self.current: dict | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "tr" and "data-schedule" in attributes:
            self.current = {"class": attributes.get("class") or "", "links": [], "text": ""}
            self.rows[attributes["data-schedule"]] = self.current
        elif tag == "a" and self.current is not None:
            self.current["links"].append(attributes["href"])

    def handle_endtag(self, tag):
        if tag == "tr":
            self.current = None

    def handle_data(self, data):
        if self.current is not None:
            self.current["text"] += data


def schedule_rows(response) -> dict[str, dict]:
    parser = ScheduleRows()
    parser.feed(response.content.decode())
    return parser.rows


@pytest.fixture
def schedules():
    """Two schedules: reconcile ran 5 s ago and failed; prune has not run for three hours."""
    reconcile = make_schedule("reconcile clusters", "placements.reconcile_clusters", 15, changed_ago_s=3600)
    prune = make_schedule("prune traffic", "placements.prune_traffic", 3600, changed_ago_s=3 * 3600)
    make_run("reconcile_clusters", TaskRunStatus.FAILED, ago_s=5, error="ClusterError: aws-use1-a timed out\ntrace")
    return {"reconcile": reconcile, "prune": prune}


def test_health_page_marks_late_schedule(superuser_client, schedules, broker):
    response = superuser_client.get(URL)

    rows = schedule_rows(response)
    assert response.status_code == 200
    assert b'<table id="schedules">' in response.content
    assert rows["prune traffic"]["class"] == "late"
    assert rows["reconcile clusters"]["class"] == ""


def test_health_page_warns_when_a_schedule_is_late(superuser_client, schedules, broker):
    response = superuser_client.get(URL)

    assert b'id="late-warning"' in response.content
    assert b"1 schedule late: prune traffic." in response.content


def test_no_warning_when_on_time(superuser_client, broker):
    make_schedule("reconcile clusters", "placements.reconcile_clusters", 15)

    response = superuser_client.get(URL)

    assert response.status_code == 200
    assert b'id="late-warning"' not in response.content


def test_health_page_shows_last_outcome_and_error(superuser_client, schedules, broker):
    row = schedule_rows(superuser_client.get(URL))["reconcile clusters"]

    assert "failed" in row["text"]
    assert "ClusterError: aws-use1-a timed out" in row["text"]
    assert "trace" not in row["text"]


def test_health_page_links_schedule_and_runs(superuser_client, schedules, broker):
    row = schedule_rows(superuser_client.get(URL))["reconcile clusters"]

    change_url = reverse("admin:django_celery_beat_periodictask_change", args=[schedules["reconcile"].pk])
    assert change_url in row["links"]
    assert reverse("admin:tasks_taskrun_changelist") + "?task_name=reconcile_clusters" in row["links"]


def test_health_page_shows_queue_backlog(superuser_client, broker):
    broker.rpush("celery", "message-1", "message-2")

    response = superuser_client.get(URL)

    assert b'data-backlog="2"' in response.content
    assert b"2 task messages waiting in the broker." in response.content


def test_health_page_without_broker_says_so(superuser_client, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True

    response = superuser_client.get(URL)

    assert b'data-backlog=""' in response.content
    assert b"Not available" in response.content


def test_health_page_without_schedules_points_to_setup(superuser_client, broker):
    response = superuser_client.get(URL)

    assert b'<table id="schedules">' in response.content
    assert b"setup_schedules" in response.content


def test_ops_reads_health_page(client, ops, schedules, broker):
    client.force_login(ops)

    response = client.get(URL)

    assert response.status_code == 200
    assert set(schedule_rows(response)) == {"reconcile clusters", "prune traffic"}


def test_staff_without_task_run_permission_gets_403(client, compliance_officer):
    client.force_login(compliance_officer)

    assert client.get(URL).status_code == 403


def test_anonymous_is_sent_to_login(client):
    response = client.get(URL)

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_task_run_list_links_to_health_page(superuser_client):
    response = superuser_client.get(reverse("admin:tasks_taskrun_changelist"))

    assert URL.encode() in response.content


def test_schedule_list_shows_last_run(superuser_client, schedules):
    response = superuser_client.get(reverse("admin:django_celery_beat_periodictask_changelist"))

    assert response.status_code == 200
    assert b"?task_name=reconcile_clusters" in response.content
    assert b"failed at " in response.content
