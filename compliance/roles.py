"""Staff roles: Django groups whose permissions decide what a staff member may do in the API and the admin.

- ``ops`` runs the fleet: cordons, uncordons and drains clusters, declares and clears outages, previews
  and applies re-plans, and approves or rejects failovers. It edits the Celery beat schedules (interval,
  enabled, run now). It reads the inventory, plans, task runs and the trail.
- ``compliance`` adds, changes and deletes placement locks, and reads the deployments and the trail.
- ``auditor`` reads every MCM model, the audit trail included, and the beat schedules, and changes nothing.

The groups are created or brought up to date after every ``migrate`` (``post_migrate``), so the
definitions below are the source of truth: permissions added to a role group by hand are removed
on the next migrate. Give a single user an extra permission directly instead.
Superusers pass every check without a role.
"""

import logging
from collections.abc import Iterable

from django.apps import apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from rest_framework.permissions import SAFE_METHODS, BasePermission

from compliance.services import record_event

logger = logging.getLogger(__name__)

OPS = "ops"
COMPLIANCE = "compliance"
AUDITOR = "auditor"

# Apps whose every model an auditor may view. Third-party apps stay out: the DRF token admin shows secrets.
AUDITED_APPS = ("fleet", "placements", "compliance", "tasks")

# Permissions behind each operator action, checked by the API and the admin alike.
CLUSTER_OPERATE = "fleet.change_cluster"  # cordon, uncordon, drain
OUTAGE_DECLARE = "fleet.add_outage"
OUTAGE_CLEAR = "fleet.change_outage"
REPLAN = "placements.add_placementplan"  # preview and apply a re-plan
FAILOVER_DECIDE = "placements.change_failoverrequest"  # approve or reject
AUDIT_VIEW = "compliance.view_auditevent"
LOCK_ADD = "compliance.add_placementlock"
LOCK_CHANGE = "compliance.change_placementlock"
LOCK_DELETE = "compliance.delete_placementlock"
LOCK_VIEW = "compliance.view_placementlock"
# Staff who create, change or delete a customer's deployment for them; customers change their own without it.
DEPLOYMENT_ADD = "placements.add_deployment"
DEPLOYMENT_CHANGE = "placements.change_deployment"
DEPLOYMENT_DELETE = "placements.delete_deployment"
# Revoking another user's API token, for example a customer's leaked one.
TOKEN_REVOKE = "placements.change_apitoken"
# Background work: task runs and background health, and the Celery beat schedules kept by django-celery-beat.
TASK_RUN_VIEW = "tasks.view_taskrun"
SCHEDULE_VIEW = "django_celery_beat.view_periodictask"
# Change a schedule's interval, enable or disable it, or run it now.
SCHEDULE_CHANGE = "django_celery_beat.change_periodictask"
# Schedules share interval rows, so ops may add a new interval but not change one in place.
SCHEDULE_VIEWS = (
    SCHEDULE_VIEW,
    "django_celery_beat.view_intervalschedule",
    "django_celery_beat.view_crontabschedule",
    "django_celery_beat.view_solarschedule",
    "django_celery_beat.view_clockedschedule",
)

ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    OPS: (
        CLUSTER_OPERATE,
        OUTAGE_DECLARE,
        OUTAGE_CLEAR,
        REPLAN,
        FAILOVER_DECIDE,
        DEPLOYMENT_ADD,
        DEPLOYMENT_CHANGE,
        DEPLOYMENT_DELETE,
        TOKEN_REVOKE,
        AUDIT_VIEW,
        LOCK_VIEW,
        TASK_RUN_VIEW,
        *SCHEDULE_VIEWS,
        SCHEDULE_CHANGE,
        "django_celery_beat.add_intervalschedule",
    ),
    COMPLIANCE: (
        LOCK_ADD,
        LOCK_CHANGE,
        LOCK_DELETE,
        LOCK_VIEW,
        "compliance.view_lockchange",
        AUDIT_VIEW,
        "placements.view_customer",
        "placements.view_deployment",
        "fleet.view_provider",
        "fleet.view_region",
    ),
    # The schedule models hold no secrets: the schedules ``setup_schedules`` creates pass no arguments.
    AUDITOR: SCHEDULE_VIEWS,
}

# Apps whose every model ops may view besides the permissions above.
OPS_VIEW_APPS = ("fleet", "placements")

ROLE_NAMES = tuple(ROLE_PERMISSIONS)


def role_permissions(role: str) -> list[Permission]:
    """Return the permission rows of ``role``, skipping a named permission whose model does not exist yet."""
    check_role(role)
    found = list(permissions_by_name(ROLE_PERMISSIONS[role]))
    view_apps = {OPS: OPS_VIEW_APPS, AUDITOR: AUDITED_APPS}.get(role, ())
    if view_apps:
        views = Permission.objects.filter(content_type__app_label__in=view_apps, codename__startswith="view_")
        found.extend(views)
    return sorted(set(found), key=lambda permission: permission.pk)


def permissions_by_name(names: Iterable[str]) -> Iterable[Permission]:
    for name in names:
        app_label, _, codename = name.partition(".")
        permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
        if permission is None:
            logger.info("Permission %s not found: roles get it after the migrate that creates it", name)
            continue
        yield permission


def ensure_roles(using: str = "default") -> dict[str, Group]:
    """Create the role groups, or reset their permissions to the definitions above. Safe to run repeatedly."""
    # The permissions of apps after this one in INSTALLED_APPS may not exist yet during post_migrate.
    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using)
    groups = {}
    with transaction.atomic(using=using):
        for role in ROLE_NAMES:
            group, _ = Group.objects.using(using).get_or_create(name=role)
            group.permissions.set(role_permissions(role))
            groups[role] = group
    return groups


def create_roles_after_migrate(sender, using="default", **kwargs) -> None:
    ensure_roles(using=using)


def grant_role(user, role: str, *, actor, reason: str) -> bool:
    """Add ``user`` to the role's group and make them staff, because every role works in the admin.

    Records ``user.role_granted`` in the audit trail and returns True, or returns False and records
    nothing when the user already has the role.
    """
    check_role(role)
    before = {"roles": roles_of(user), "is_staff": user.is_staff}
    if role in before["roles"]:
        return False
    group = Group.objects.filter(name=role).first() or ensure_roles()[role]
    with transaction.atomic():
        user.groups.add(group)
        if not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        after = {"roles": roles_of(user), "is_staff": True}
        record_event(actor=actor, action="user.role_granted", subject=user, reason=reason, before=before, after=after)
    clear_permission_cache(user)
    return True


def revoke_role(user, role: str, *, actor, reason: str) -> bool:
    """Remove ``user`` from the role's group and record ``user.role_revoked``.

    Staff status stays, except for a customer member left without a role: staff read every customer's
    objects, so such a user goes back to being a customer only. Returns False and records nothing when
    the user does not have the role.
    """
    check_role(role)
    before = {"roles": roles_of(user), "is_staff": user.is_staff}
    if role not in before["roles"]:
        return False
    with transaction.atomic():
        user.groups.remove(*Group.objects.filter(name=role))
        if user.is_staff and not user.is_superuser and not roles_of(user) and user.customers.exists():
            user.is_staff = False
            user.save(update_fields=["is_staff"])
        after = {"roles": roles_of(user), "is_staff": user.is_staff}
        record_event(actor=actor, action="user.role_revoked", subject=user, reason=reason, before=before, after=after)
    clear_permission_cache(user)
    return True


def check_role(role: str) -> None:
    if role not in ROLE_PERMISSIONS:
        raise ValueError(f"Unknown role {role!r}: use one of {', '.join(ROLE_NAMES)}.")


def roles_of(user) -> list[str]:
    if not user.is_authenticated:
        return []
    return sorted(user.groups.filter(name__in=ROLE_NAMES).values_list("name", flat=True))


def clear_permission_cache(user) -> None:
    # ModelBackend caches permissions on the user object, so a granted role shows on the same object.
    for attribute in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(attribute, None)


# API permission classes.


def requires_permission(permission: str, role: str) -> type[BasePermission]:
    """Return a DRF permission class that admits users with ``permission``, whose 403 message names the role."""

    class HasRolePermission(BasePermission):
        message = f"This action needs the {role} role (permission {permission})."

        def has_permission(self, request, view):
            user = request.user
            return bool(user and user.is_authenticated and user.has_perm(permission))

    HasRolePermission.__name__ = f"Requires_{permission.replace('.', '_')}"
    return HasRolePermission


CanOperateClusters = requires_permission(CLUSTER_OPERATE, OPS)
CanDeclareOutages = requires_permission(OUTAGE_DECLARE, OPS)
CanClearOutages = requires_permission(OUTAGE_CLEAR, OPS)
CanReplan = requires_permission(REPLAN, OPS)
CanDecideFailovers = requires_permission(FAILOVER_DECIDE, OPS)
CanViewAuditTrail = requires_permission(AUDIT_VIEW, f"{AUDITOR}, {COMPLIANCE} or {OPS}")


class StaffWritesNeedModelPermission(BasePermission):
    """Make staff members hold the model permission of a write; customers pass, scoped by the queryset.

    A customer writes only rows of their own customers, which the view's queryset ensures. Staff read
    every customer's rows, so a staff write needs ``add_``, ``change_`` or ``delete_`` of the model.
    """

    ACTIONS = {"POST": "add", "PUT": "change", "PATCH": "change", "DELETE": "delete"}

    def has_permission(self, request, view):
        user = request.user
        action = self.ACTIONS.get(request.method)
        if action is None or not (user and user.is_authenticated and user.is_staff):
            return True
        meta = view.queryset.model._meta
        permission = f"{meta.app_label}.{action}_{meta.model_name}"
        if user.has_perm(permission):
            return True
        self.message = f"A staff member needs the {OPS} role (permission {permission}) for this write."
        return False


class AuditorsReadOnly(BasePermission):
    """Admit only safe methods (GET, HEAD, OPTIONS) from an auditor who has no role that writes.

    Auditors are staff, so this stops them on endpoints that admit any staff member for a write.
    A view whose writes concern only the requester's own rows (their API tokens, for example) opts out
    with ``auditors_may_write = True``.
    """

    message = "The auditor role is read-only: only GET, HEAD and OPTIONS requests are allowed."

    def has_permission(self, request, view):
        if request.method in SAFE_METHODS or getattr(view, "auditors_may_write", False):
            return True
        return not is_read_only_auditor(request.user)


def is_read_only_auditor(user) -> bool:
    if not (user and user.is_authenticated) or user.is_superuser:
        return False
    roles = roles_of(user)
    return AUDITOR in roles and not (set(roles) - {AUDITOR})
