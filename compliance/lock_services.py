"""Changes to placement locks, the lock hierarchy, and the effective lock of a deployment.

Locks exist at three levels: platform (no subject), customer and deployment. A lower level can only
narrow a higher one: a lock that lists a region, jurisdiction or provider that a higher lock forbids
is rejected, naming the higher lock, its level and its reason. A change to a higher lock that
would forbid what a lower lock lists is rejected the same way, naming the lower lock.

Every change needs a reason, is kept as a ``LockChange`` (before and after) and is audited in the
same transaction. The API (``compliance.api_locks``) and the admin both call these functions.

Service input (``data``) is a dict with these keys, any of which an update may leave out:

- ``customer``: a ``Customer`` or its name; ``deployment``: a ``Deployment`` or its id.
  Neither makes a platform lock, and both together are rejected.
- ``allowed_regions``: ``Region`` rows or ``"provider/code"`` keys.
- ``allowed_jurisdictions``: codes such as ``"eu"``.
- ``allowed_providers`` and ``excluded_providers``: ``Provider`` rows or names.
- ``required_capabilities``: strings.
- ``reason``: why the lock exists.
"""

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from compliance.locks import RELATED
from compliance.models import LEVEL_ORDER, LockChange, LockLevel, PlacementLock
from compliance.services import record_event
from fleet.models import Provider, Region
from placements.models import Customer, Deployment

logger = logging.getLogger(__name__)

LIST_FIELDS = (
    "allowed_regions",
    "allowed_jurisdictions",
    "allowed_providers",
    "excluded_providers",
    "required_capabilities",
)
LOCK_FIELDS = ("customer", "deployment", *LIST_FIELDS, "reason")


@dataclass
class LockRules:
    """A lock's rules as plain values, for the hierarchy checks. Empty parts do not restrict."""

    regions: dict[str, Region] = field(default_factory=dict)  # "provider/code" -> region
    jurisdictions: set[str] = field(default_factory=set)
    providers: set[str] = field(default_factory=set)
    excluded: set[str] = field(default_factory=set)
    capabilities: set[str] = field(default_factory=set)


def rules_of(lock: PlacementLock) -> LockRules:
    return LockRules(
        # .all() reads the prefetch of _locks, which every caller's locks come from.
        regions={str(region): region for region in lock.allowed_regions.all()},
        jurisdictions=set(lock.allowed_jurisdictions),
        providers={provider.name for provider in lock.allowed_providers.all()},
        excluded={provider.name for provider in lock.excluded_providers.all()},
        capabilities=set(lock.required_capabilities),
    )


def rules_from_cleaned(cleaned: Mapping[str, Any]) -> LockRules:
    return LockRules(
        regions={str(region): region for region in cleaned["allowed_regions"]},
        jurisdictions=set(cleaned["allowed_jurisdictions"]),
        providers={provider.name for provider in cleaned["allowed_providers"]},
        excluded={provider.name for provider in cleaned["excluded_providers"]},
        capabilities=set(cleaned["required_capabilities"]),
    )


def describe(lock: PlacementLock) -> str:
    """Name a lock for messages: level, id, subject and reason."""
    return f"the {lock.level} lock {lock.pk} on {lock.subject_label} (reason: {lock.reason})"


def level_of(customer, deployment) -> str:
    if deployment is not None:
        return LockLevel.DEPLOYMENT
    if customer is not None:
        return LockLevel.CUSTOMER
    return LockLevel.PLATFORM


# The hierarchy.


def forbidden_by(higher: LockRules, lower: LockRules, *, by: str = "lower") -> dict[str, list[str]]:
    """Return what ``lower`` lists that ``higher`` forbids, by field: {field: [what, ...]}.

    ``by="lower"`` keys each item by the field of ``lower`` that lists it, for when the lock being
    written is the lower one. ``by="higher"`` keys it by the rule of ``higher`` that forbids it, for
    when the lock being written is the higher one, because that rule is what the writer would change.
    """
    found: dict[str, list[str]] = {}

    def add(lower_field: str, higher_field: str, text: str) -> None:
        found.setdefault(lower_field if by == "lower" else higher_field, []).append(text)

    higher_region_jurisdictions = {region.jurisdiction for region in higher.regions.values()}
    higher_region_providers = {region.provider.name for region in higher.regions.values()}
    for key, region in sorted(lower.regions.items()):
        if higher.regions and key not in higher.regions:
            add("allowed_regions", "allowed_regions", f"region {key}")
        elif higher.jurisdictions and region.jurisdiction not in higher.jurisdictions:
            jurisdiction = region.jurisdiction or "unknown"
            add("allowed_regions", "allowed_jurisdictions", f"region {key} (jurisdiction {jurisdiction})")
        elif higher.providers and region.provider.name not in higher.providers:
            add("allowed_regions", "allowed_providers", f"region {key} (provider {region.provider.name})")
        elif region.provider.name in higher.excluded:
            add("allowed_regions", "excluded_providers", f"region {key} (excluded provider {region.provider.name})")
    for code in sorted(lower.jurisdictions):
        if higher.jurisdictions and code not in higher.jurisdictions:
            add("allowed_jurisdictions", "allowed_jurisdictions", f"jurisdiction {code}")
        elif higher.regions and code not in higher_region_jurisdictions:
            add("allowed_jurisdictions", "allowed_regions", f"jurisdiction {code}")
    for name in sorted(lower.providers):
        if higher.providers and name not in higher.providers:
            add("allowed_providers", "allowed_providers", f"provider {name}")
        elif name in higher.excluded:
            add("allowed_providers", "excluded_providers", f"provider {name}")
        elif higher.regions and name not in higher_region_providers:
            add("allowed_providers", "allowed_regions", f"provider {name}")
    return found


def higher_locks(customer, deployment, *, exclude_pk=None) -> list[PlacementLock]:
    """Return the locks above a lock on this subject, widest first."""
    query = Q(customer__isnull=True, deployment__isnull=True)
    if deployment is not None:
        query |= Q(customer_id=deployment.customer_id, deployment__isnull=True)
    elif customer is None:
        return []
    return list(_locks(query, exclude_pk))


def lower_locks(customer, deployment, *, exclude_pk=None) -> list[PlacementLock]:
    """Return the locks below a lock on this subject."""
    if deployment is not None:
        return []
    if customer is not None:
        return list(_locks(Q(deployment__customer_id=customer.pk), exclude_pk))
    return list(_locks(Q(customer__isnull=False) | Q(deployment__isnull=False), exclude_pk))


def _locks(query: Q, exclude_pk) -> Iterable[PlacementLock]:
    rows = PlacementLock.objects.filter(query).select_related("customer", "deployment__customer")
    if exclude_pk is not None:
        rows = rows.exclude(pk=exclude_pk)
    return rows.prefetch_related(*RELATED).order_by("pk")


def check_hierarchy(cleaned: Mapping[str, Any], *, instance: PlacementLock | None = None) -> None:
    """Reject a lock that widens a higher lock, or that a lower lock would widen; raise ``ValidationError``."""
    customer, deployment = cleaned["customer"], cleaned["deployment"]
    exclude = instance.pk if instance is not None else None
    rules = rules_from_cleaned(cleaned)
    level = level_of(customer, deployment)
    errors: dict[str, list[str]] = {}
    for higher in higher_locks(customer, deployment, exclude_pk=exclude):
        for part, items in forbidden_by(rules_of(higher), rules).items():
            errors.setdefault(part, []).append(
                f"{', '.join(items)}: forbidden by {describe(higher)}. A {level} lock can only narrow it."
            )
    for lower in lower_locks(customer, deployment, exclude_pk=exclude):
        for part, items in forbidden_by(rules, rules_of(lower), by="higher").items():
            errors.setdefault(part, []).append(
                f"This {level} lock would forbid {', '.join(items)}, which {describe(lower)} allows. "
                "Narrow or delete that lock first."
            )
    if errors:
        raise ValidationError(errors)


# Validation.


def validate_lock(data: Mapping[str, Any], *, instance: PlacementLock | None = None) -> dict:
    """Resolve and check a whole lock (merged with the stored one on update); return it resolved.

    Raises ``ValidationError`` keyed by field, each message quoting the rejected value.
    """
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {
        "customer": _resolve_customer(data.get("customer"), errors),
        "deployment": _resolve_deployment(data.get("deployment"), errors),
        "allowed_regions": _resolve_all(data.get("allowed_regions"), "allowed_regions", _resolve_region, errors),
        "allowed_providers": _resolve_all(
            data.get("allowed_providers"), "allowed_providers", _resolve_provider, errors
        ),
        "excluded_providers": _resolve_all(
            data.get("excluded_providers"), "excluded_providers", _resolve_provider, errors
        ),
        "allowed_jurisdictions": _codes(data.get("allowed_jurisdictions"), "allowed_jurisdictions", errors, lower=True),
        "required_capabilities": _codes(data.get("required_capabilities"), "required_capabilities", errors),
    }
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        errors.setdefault("reason", []).append("A lock needs a reason: why it exists, for example the contract clause.")
    else:
        cleaned["reason"] = reason.strip()
    if cleaned["customer"] is not None and cleaned["deployment"] is not None:
        errors.setdefault("deployment", []).append(
            "Set customer or deployment, not both: a deployment lock already applies within its customer's lock."
        )
    both = set(cleaned["allowed_providers"]) & set(cleaned["excluded_providers"])
    if both:
        names = ", ".join(sorted(provider.name for provider in both))
        errors.setdefault("excluded_providers", []).append(f"{names}: both allowed and excluded.")
    if errors:
        raise ValidationError(errors)
    check_hierarchy(cleaned, instance=instance)
    return cleaned


def _resolve_all(values, field_name: str, resolve, errors: dict) -> list:
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, Iterable):
        errors.setdefault(field_name, []).append(f"{values!r} is not a list.")
        return []
    resolved = []
    for value in values:
        item = resolve(value, field_name, errors)
        if item is not None and item not in resolved:
            resolved.append(item)
    return resolved


def _resolve_region(value, field_name: str, errors: dict) -> Region | None:
    if isinstance(value, Region):
        return value
    provider, _slash, code = str(value).partition("/")
    region = Region.objects.select_related("provider").filter(provider__name=provider, code=code).first()
    if region is None:
        errors.setdefault(field_name, []).append(f"Region {value!r} not found; use a 'provider/code' key.")
    return region


def _resolve_provider(value, field_name: str, errors: dict) -> Provider | None:
    if isinstance(value, Provider):
        return value
    provider = Provider.objects.filter(name=str(value)).first()
    if provider is None:
        errors.setdefault(field_name, []).append(f"Provider {value!r} not found.")
    return provider


def _resolve_customer(value, errors: dict) -> Customer | None:
    if value is None or value == "" or isinstance(value, Customer):
        return value or None
    customer = Customer.objects.filter(name=str(value)).first()
    if customer is None:
        errors.setdefault("customer", []).append(f"Customer {value!r} not found.")
    return customer


def _resolve_deployment(value, errors: dict) -> Deployment | None:
    if value is None or value == "" or isinstance(value, Deployment):
        return value or None
    if isinstance(value, bool) or not str(value).isdigit():
        errors.setdefault("deployment", []).append(f"{value!r} is not a deployment id.")
        return None
    deployment = Deployment.objects.select_related("customer").filter(pk=int(value)).first()
    if deployment is None:
        errors.setdefault("deployment", []).append(f"Deployment {value!r} not found.")
    return deployment


def _codes(values, field_name: str, errors: dict, *, lower: bool = False) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, list | tuple):
        errors.setdefault(field_name, []).append(f"{values!r} is not a list of strings.")
        return []
    codes: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            errors.setdefault(field_name, []).append(f"{value!r} is not a non-empty string.")
            continue
        code = value.strip().lower() if lower else value.strip()
        if code not in codes:
            codes.append(code)
    return codes


# Writes.


def lock_snapshot(lock: PlacementLock) -> dict:
    """Return a lock as JSON-ready data, for the before and after of its history and audit events."""
    return {
        "level": lock.level,
        "customer": lock.customer.name if lock.customer_id else None,
        "deployment": str(lock.deployment) if lock.deployment_id else None,
        "allowed_regions": sorted(str(region) for region in lock.allowed_regions.select_related("provider")),
        "allowed_jurisdictions": sorted(lock.allowed_jurisdictions),
        "allowed_providers": sorted(provider.name for provider in lock.allowed_providers.all()),
        "excluded_providers": sorted(provider.name for provider in lock.excluded_providers.all()),
        "required_capabilities": sorted(lock.required_capabilities),
        "reason": lock.reason,
    }


def stored_values(lock: PlacementLock) -> dict:
    """Return a lock's values in the service input form, for merging a partial update."""
    return {
        "customer": lock.customer,
        "deployment": lock.deployment,
        "allowed_regions": list(lock.allowed_regions.select_related("provider")),
        "allowed_jurisdictions": list(lock.allowed_jurisdictions),
        "allowed_providers": list(lock.allowed_providers.all()),
        "excluded_providers": list(lock.excluded_providers.all()),
        "required_capabilities": list(lock.required_capabilities),
        "reason": lock.reason,
    }


def _change_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError({"change_reason": ["A lock change needs a reason: why the lock is changed."]})
    return reason.strip()


def _write(lock: PlacementLock, cleaned: dict) -> None:
    lock.customer = cleaned["customer"]
    lock.deployment = cleaned["deployment"]
    lock.allowed_jurisdictions = cleaned["allowed_jurisdictions"]
    lock.required_capabilities = cleaned["required_capabilities"]
    lock.reason = cleaned["reason"]
    lock.save()
    lock.allowed_regions.set(cleaned["allowed_regions"])
    lock.allowed_providers.set(cleaned["allowed_providers"])
    lock.excluded_providers.set(cleaned["excluded_providers"])


def record_seeded_lock(*, actor, lock: PlacementLock) -> None:
    """Record a lock that seeding code wrote directly, with its history row and audit event.

    Requests no re-plan, because seeding plans the whole fleet afterwards. Other code creates locks
    with ``create_lock``, which also checks them against the hierarchy.
    """
    _record(
        actor=actor,
        action="created",
        lock_pk=lock.pk,
        lock=lock,
        reason=lock.reason,
        before=None,
        after=lock_snapshot(lock),
        replan=False,
    )


def _record(*, actor, action: str, lock_pk: int, lock, reason: str, before, after, replan: bool = True) -> None:
    event = record_event(
        actor=actor,
        action=f"lock.{action}",
        subject=(PlacementLock._meta.label_lower, lock_pk),
        reason=reason,
        before=before,
        after=after,
    )
    LockChange.objects.create(
        lock=lock,
        lock_pk=lock_pk,
        action=action,
        actor=event.actor,
        actor_label=event.actor_label,
        reason=reason,
        before=before,
        after=after,
    )
    # Replicas that already run where the changed lock forbids move at this re-plan, not at the next
    # scheduled one. Until then the executor rejects new writes outside the lock.
    if replan:
        transaction.on_commit(_request_replan)


def _request_replan() -> None:
    from placements.reconcile import enqueue_replan  # placements imports compliance

    enqueue_replan()


def create_lock(*, actor, data: Mapping[str, Any], reason: str | None = None) -> PlacementLock:
    """Create a lock; ``reason`` (why it is added) defaults to the lock's own reason."""
    with transaction.atomic():
        cleaned = validate_lock(data)
        change_reason = _change_reason(reason if reason else cleaned["reason"])
        lock = PlacementLock()
        _write(lock, cleaned)
        _record(
            actor=actor,
            action="created",
            lock_pk=lock.pk,
            lock=lock,
            reason=change_reason,
            before=None,
            after=lock_snapshot(lock),
        )
    logger.info("Created %s lock %s on %s", lock.level, lock.pk, lock.subject_label)
    return lock


def update_lock(*, actor, lock: PlacementLock, data: Mapping[str, Any], reason: str) -> PlacementLock:
    """Change a lock; parts that ``data`` leaves out keep their stored values. ``reason`` is why."""
    with transaction.atomic():
        change_reason = _change_reason(reason)
        lock = (
            PlacementLock.objects.select_for_update(of=("self",))
            .select_related("customer", "deployment__customer")
            .get(pk=lock.pk)
        )
        before = lock_snapshot(lock)
        cleaned = validate_lock({**stored_values(lock), **data}, instance=lock)
        _write(lock, cleaned)
        after = lock_snapshot(lock)
        _record(
            actor=actor, action="updated", lock_pk=lock.pk, lock=lock, reason=change_reason, before=before, after=after
        )
    logger.info("Updated lock %s", lock.pk)
    return lock


def delete_lock(*, actor, lock: PlacementLock, reason: str) -> None:
    """Delete a lock; its history stays, with ``lock_pk`` naming it."""
    with transaction.atomic():
        change_reason = _change_reason(reason)
        lock = (
            PlacementLock.objects.select_for_update(of=("self",))
            .select_related("customer", "deployment__customer")
            .get(pk=lock.pk)
        )
        before = lock_snapshot(lock)
        pk = lock.pk
        _record(actor=actor, action="deleted", lock_pk=pk, lock=lock, reason=change_reason, before=before, after=None)
        lock.delete()
    logger.info("Deleted lock %s", pk)


# The effective lock, and requests that contradict it.


def locks_binding(customer: Customer | None, deployment: Deployment | None = None) -> list[PlacementLock]:
    """Return the locks that bind a deployment (or a new deployment of ``customer``), widest level first."""
    query = Q(customer__isnull=True, deployment__isnull=True)
    if customer is not None:
        query |= Q(customer_id=customer.pk, deployment__isnull=True)
    if deployment is not None and deployment.pk:
        query |= Q(deployment_id=deployment.pk)
    locks = list(_locks(query, None))
    return sorted(locks, key=lambda lock: (LEVEL_ORDER.index(lock.level), lock.pk))


def effective_lock(deployment: Deployment) -> dict:
    """Return the intersection of the locks that bind ``deployment``, with the locks each part comes from.

    Each part is ``{"values": [...] or null, "from": [lock ids]}``; null values do not restrict.
    Allowed lists intersect, excluded providers and required capabilities add up.
    """
    locks = locks_binding(deployment.customer, deployment)
    parts: dict[str, dict] = {name: {"values": None, "from": []} for name in LIST_FIELDS}
    for lock in locks:
        rules = rules_of(lock)
        for name, values, narrows in (
            ("allowed_regions", set(rules.regions), True),
            ("allowed_jurisdictions", rules.jurisdictions, True),
            ("allowed_providers", rules.providers, True),
            ("excluded_providers", rules.excluded, False),
            ("required_capabilities", rules.capabilities, False),
        ):
            if not values:
                continue
            part = parts[name]
            current = set(part["values"]) if part["values"] is not None else None
            if narrows:
                merged = values if current is None else current & values
            else:
                merged = values | (current or set())
            part["values"] = sorted(merged)
            part["from"].append(lock.pk)
    return {
        "locks": [
            {"id": lock.pk, "level": lock.level, "subject": lock.subject_label, "reason": lock.reason} for lock in locks
        ],
        **parts,
    }


def region_violations(regions: Iterable[Region], *, customer: Customer | None, deployment=None) -> list[str]:
    """Return a message for each region that a lock binding the deployment forbids, naming the lock."""
    locks = [(lock, rules_of(lock)) for lock in locks_binding(customer, deployment)]
    messages = []
    for region in regions:
        requested = LockRules(regions={str(region): region})
        for lock, rules in locks:
            if forbidden_by(rules, requested):
                messages.append(f"Region {region} is forbidden by {describe(lock)}.")
                break
    return messages


def check_regions(regions: Iterable[Region], *, customer: Customer | None, deployment=None, field_name: str) -> None:
    """Raise ``ValidationError`` on ``field_name`` when a lock forbids one of ``regions``."""
    messages = region_violations(regions, customer=customer, deployment=deployment)
    if messages:
        raise ValidationError({field_name: messages})
