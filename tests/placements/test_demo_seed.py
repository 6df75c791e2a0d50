"""The demo's seed: its locks are recorded in lock history and the audit trail like any other."""

import pytest

from compliance.models import AuditEvent, LockChange, PlacementLock
from fleet.builtin import load_builtin_fleet
from placements.demo import seed_demo

pytestmark = pytest.mark.django_db


def test_seeded_locks_have_history(tmp_path):
    load_builtin_fleet()
    seed_demo(count=60, data_dir=tmp_path)

    locks = list(PlacementLock.objects.all())
    assert locks, "the seed made no lock, so this test checks nothing"
    for lock in locks:
        change = LockChange.objects.get(lock_pk=lock.pk, action="created")
        assert change.after["reason"] == lock.reason
        event = AuditEvent.objects.get(action="lock.created", subject_id=str(lock.pk))
        assert event.after == change.after
