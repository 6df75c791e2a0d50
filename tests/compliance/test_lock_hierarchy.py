"""Lock hierarchy: platform, customer and deployment locks, where a lower level only narrows a higher one."""

import pytest
from django.core.exceptions import ValidationError

from compliance.lock_services import create_lock, delete_lock, effective_lock, update_lock
from compliance.locks import locks_by_subject
from compliance.models import AuditEvent, LockChange, PlacementLock
from placements.models import Deployment
from placements.services import create_deployment, delete_deployment, update_deployment

pytestmark = pytest.mark.django_db


def messages(error: ValidationError) -> dict[str, str]:
    return {field: " ".join(items) for field, items in error.value.message_dict.items()}


@pytest.fixture
def eu_only(fleet, acme, compliance_officer):
    return create_lock(
        actor=compliance_officer,
        data={"customer": acme, "allowed_jurisdictions": ["eu"], "reason": "Acme contract: EU data only."},
    )


def test_deployment_lock_cannot_widen_customer_lock(fleet, acme_chat, eu_only, compliance_officer):
    with pytest.raises(ValidationError) as error:
        create_lock(
            actor=compliance_officer,
            data={"deployment": acme_chat, "allowed_regions": ["aws/us-east-1"], "reason": "Latency."},
        )
    text = messages(error)["allowed_regions"]
    assert "region aws/us-east-1 (jurisdiction us)" in text
    assert f"customer lock {eu_only.pk} on customer acme" in text
    assert "Acme contract: EU data only." in text
    assert not PlacementLock.objects.filter(deployment=acme_chat).exists()


def test_deployment_lock_may_narrow_customer_lock(fleet, acme_chat, eu_only, compliance_officer):
    lock = create_lock(
        actor=compliance_officer,
        data={"deployment": acme_chat, "allowed_regions": ["aws/eu-west-1"], "reason": "One region."},
    )
    assert lock.level == "deployment"


def test_customer_lock_cannot_widen_platform_lock(fleet, acme, compliance_officer):
    platform = create_lock(
        actor=compliance_officer, data={"excluded_providers": ["gcp"], "reason": "Platform: no GCP contract."}
    )
    assert platform.level == "platform"
    with pytest.raises(ValidationError) as error:
        create_lock(actor=compliance_officer, data={"customer": acme, "allowed_providers": ["gcp"], "reason": "x"})
    text = messages(error)["allowed_providers"]
    assert f"platform lock {platform.pk} on the platform" in text
    assert "Platform: no GCP contract." in text


def test_higher_lock_change_that_breaks_a_lower_one_is_rejected(fleet, acme_chat, eu_only, compliance_officer):
    lower = create_lock(
        actor=compliance_officer,
        data={"deployment": acme_chat, "allowed_regions": ["aws/eu-west-1"], "reason": "One region."},
    )
    with pytest.raises(ValidationError) as error:
        update_lock(
            actor=compliance_officer, lock=eu_only, data={"allowed_jurisdictions": ["us"]}, reason="Moving to US."
        )
    # The error sits on the field the request changed, not on the lower lock's field.
    assert list(messages(error)) == ["allowed_jurisdictions"]
    text = messages(error)["allowed_jurisdictions"]
    assert "would forbid region aws/eu-west-1 (jurisdiction eu)" in text
    assert f"deployment lock {lower.pk} on deployment acme/chat" in text
    eu_only.refresh_from_db()
    assert eu_only.allowed_jurisdictions == ["eu"]


def test_change_needs_reason_and_keeps_history(fleet, acme, eu_only, compliance_officer):
    with pytest.raises(ValidationError) as error:
        update_lock(actor=compliance_officer, lock=eu_only, data={"allowed_providers": ["aws"]}, reason=" ")
    assert "change_reason" in error.value.message_dict
    update_lock(actor=compliance_officer, lock=eu_only, data={"allowed_providers": ["aws"]}, reason="AWS only now.")
    delete_lock(actor=compliance_officer, lock=eu_only, reason="Contract ended.")

    history = list(LockChange.objects.filter(lock_pk=eu_only.pk).order_by("changed_at", "pk"))
    assert [(row.action, row.reason) for row in history] == [
        ("created", "Acme contract: EU data only."),
        ("updated", "AWS only now."),
        ("deleted", "Contract ended."),
    ]
    assert history[1].before["allowed_providers"] == []
    assert history[1].after["allowed_providers"] == ["aws"]
    assert history[2].after is None
    assert history[2].actor == compliance_officer
    actions = list(
        AuditEvent.objects.filter(subject_type="compliance.placementlock", subject_id=str(eu_only.pk))
        .order_by("created_at", "pk")
        .values_list("action", flat=True)
    )
    assert actions == ["lock.created", "lock.updated", "lock.deleted"]


def test_effective_lock_is_the_intersection_with_sources(fleet, acme_chat, eu_only, compliance_officer):
    platform = create_lock(
        actor=compliance_officer,
        data={"allowed_jurisdictions": ["eu", "us"], "required_capabilities": ["gpu"], "reason": "Platform."},
    )
    own = create_lock(
        actor=compliance_officer,
        data={"deployment": acme_chat, "allowed_regions": ["aws/eu-west-1"], "reason": "One region."},
    )
    effective = effective_lock(acme_chat)
    assert [row["id"] for row in effective["locks"]] == [platform.pk, eu_only.pk, own.pk]
    assert effective["allowed_jurisdictions"] == {"values": ["eu"], "from": [platform.pk, eu_only.pk]}
    assert effective["allowed_regions"] == {"values": ["aws/eu-west-1"], "from": [own.pk]}
    assert effective["required_capabilities"] == {"values": ["gpu"], "from": [platform.pk]}
    assert effective["allowed_providers"] == {"values": None, "from": []}


def test_scheduler_loading_includes_platform_locks(fleet, acme, globex, eu_only, compliance_officer):
    platform = create_lock(actor=compliance_officer, data={"excluded_providers": ["gcp"], "reason": "No GCP."})
    by_customer, _by_deployment = locks_by_subject()
    acme_sources = [lock.source for lock in by_customer.get(acme.pk, [])]
    assert acme_sources == [f"lock {platform.pk} on the platform", f"lock {eu_only.pk} on customer acme"]
    # A customer without a lock of its own is still bound by the platform lock.
    assert [lock.source for lock in by_customer.get(globex.pk, [])] == [f"lock {platform.pk} on the platform"]


def test_deployment_outside_the_lock_is_rejected(fleet, acme, acme_member, eu_only):
    with pytest.raises(ValidationError) as error:
        create_deployment(
            actor=acme_member,
            customer=acme,
            data={"name": "us-chat", "sku": "H100", "region_preference": ["aws/eu-west-1", "aws/us-east-1"]},
        )
    text = messages(error)["region_preference"]
    assert "Region aws/us-east-1 is forbidden by the customer lock" in text
    assert "Acme contract: EU data only." in text
    assert not Deployment.objects.filter(name="us-chat").exists()


def test_update_that_moves_outside_the_deployment_lock_is_rejected(fleet, acme_chat, acme_member, compliance_officer):
    lock = create_lock(
        actor=compliance_officer,
        data={"deployment": acme_chat, "allowed_providers": ["aws"], "reason": "AWS only for this model."},
    )
    update_deployment(actor=acme_member, deployment=acme_chat, data={"region_preference": ["aws/eu-west-1"]})
    with pytest.raises(ValidationError) as error:
        update_deployment(actor=acme_member, deployment=acme_chat, data={"region_preference": ["gcp/us-west4"]})
    assert f"deployment lock {lock.pk} on deployment acme/chat" in messages(error)["region_preference"]
    assert "AWS only for this model." in messages(error)["region_preference"]


def test_lock_with_both_subjects_is_rejected(fleet, acme, acme_chat, compliance_officer):
    with pytest.raises(ValidationError) as error:
        create_lock(actor=compliance_officer, data={"customer": acme, "deployment": acme_chat, "reason": "x"})
    assert "not both" in messages(error)["deployment"]


def test_stored_preference_does_not_block_other_updates(fleet, acme_chat, acme_member, eu_only):
    # acme/chat prefers US regions from before the EU lock; changing its replicas still works.
    updated = update_deployment(actor=acme_member, deployment=acme_chat, data={"desired_replicas": 2})
    assert updated.desired_replicas == 2
    update_deployment(actor=acme_member, deployment=acme_chat, data={"region_preference": ["aws/eu-west-1"]})
    # Once dropped, a forbidden region cannot be added back.
    with pytest.raises(ValidationError) as error:
        update_deployment(actor=acme_member, deployment=acme_chat, data={"region_preference": ["aws/us-east-1"]})
    assert "Region aws/us-east-1 is forbidden" in messages(error)["region_preference"]


def test_customer_cannot_shed_lock_by_deleting(fleet, acme_chat, acme_member, compliance_officer):
    lock = create_lock(
        actor=compliance_officer,
        data={"deployment": acme_chat, "allowed_regions": ["aws/eu-west-1"], "reason": "One region."},
    )

    with pytest.raises(ValidationError) as error:
        delete_deployment(actor=acme_member, deployment=acme_chat)

    assert f"deployment lock {lock.pk} on deployment acme/chat" in messages(error)["deployment"]
    assert Deployment.objects.filter(pk=acme_chat.pk).exists()
    assert PlacementLock.objects.filter(pk=lock.pk).exists()
    assert not AuditEvent.objects.filter(action__in=["deployment.deleted", "lock.deleted"]).exists()


def test_compliance_deletes_locked_deployment_with_history(fleet, acme_chat, compliance_officer):
    lock = create_lock(
        actor=compliance_officer,
        data={"deployment": acme_chat, "allowed_regions": ["aws/eu-west-1"], "reason": "One region."},
    )

    delete_deployment(actor=compliance_officer, deployment=acme_chat, reason="Contract ended.")

    assert not PlacementLock.objects.filter(pk=lock.pk).exists()
    change = LockChange.objects.get(lock_pk=lock.pk, action="deleted")
    assert change.reason == "Contract ended."
    assert AuditEvent.objects.filter(action="lock.deleted", subject_id=str(lock.pk)).exists()
    assert AuditEvent.objects.filter(action="deployment.deleted").exists()
