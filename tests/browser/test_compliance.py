"""A compliance officer changes a placement lock in the admin; the change reason lands in the lock's history."""

import pytest
from playwright.sync_api import expect

from compliance.models import LockChange, PlacementLock

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture
def lock(acme):
    return PlacementLock.objects.create(customer=acme, allowed_jurisdictions=["eu"], reason="Contract clause 7.")


def test_compliance_changes_lock_with_reason(login, compliance_officer, lock, replans):
    page = login(compliance_officer)
    page.goto("/admin/compliance/placementlock/")
    page.click(f'#result_list a[href*="/admin/compliance/placementlock/{lock.pk}/change/"]')
    page.fill("#id_allowed_jurisdictions", '["eu", "us"]')

    # Without a change reason the form is rejected and the lock stays as it was.
    page.fill("#id_change_reason", "")
    page.click('input[name="_continue"]')
    expect(page.locator(".field-change_reason .errorlist")).to_be_visible()
    lock.refresh_from_db()
    assert lock.allowed_jurisdictions == ["eu"]

    page.fill("#id_change_reason", "The amended contract allows US regions.")
    page.click('input[name="_continue"]')

    expect(page.locator("ul.messagelist .success")).to_be_visible()
    history = page.locator(".field-history")
    expect(history).to_contain_text("The amended contract allows US regions.")
    expect(history).to_contain_text(compliance_officer.username)
    lock.refresh_from_db()
    assert lock.allowed_jurisdictions == ["eu", "us"]
    change = LockChange.objects.filter(lock_pk=lock.pk).latest("changed_at")
    assert change.reason == "The amended contract allows US regions."
    assert change.after["allowed_jurisdictions"] == ["eu", "us"]
