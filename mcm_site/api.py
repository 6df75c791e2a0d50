"""The base viewsets every MCM API endpoint declares itself on.

Behaviour that each endpoint needs lives here once: tenant scoping through ``visible_to``,
atomic writes, one log line per mutation, and the mapping of model errors to HTTP statuses
(``ValidationError`` to 400, ``IntegrityError`` to 409, each naming the field).
"""

import logging
from datetime import UTC
from functools import cache

import django_filters
from django.apps import apps
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, models, transaction
from rest_framework import status, viewsets
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error

from compliance.roles import AuditorsReadOnly

logger = logging.getLogger(__name__)


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time filter that queries in UTC.

    ISO 8601 allows offsets up to 23:59 and PostgreSQL only up to 15:59. A time with a larger offset such as
    +17:29 is the same instant in UTC, so the query does not fail.
    """

    def filter(self, qs, value):
        return super().filter(qs, value.astimezone(UTC) if value is not None else value)


class ScopedViewSetMixin:
    """Scope every queryset to the requester, and turn model errors into 400 and 409 responses."""

    def get_queryset(self):
        queryset = super().get_queryset()  # type: ignore[misc]
        return queryset.visible_to(self.request.user)  # type: ignore[attr-defined]

    def get_permissions(self):
        # Auditors are staff, so endpoints that admit any staff member for a write must also reject them.
        return [*super().get_permissions(), AuditorsReadOnly()]  # type: ignore[misc]

    def handle_exception(self, exc):
        if isinstance(exc, DjangoValidationError):
            return Response(as_serializer_error(exc), status=status.HTTP_400_BAD_REQUEST)
        if isinstance(exc, IntegrityError):
            logger.warning("Rejected %s %s: %s", self.request.method, self.request.path, exc)  # type: ignore[attr-defined]
            return Response(integrity_error_detail(exc), status=status.HTTP_409_CONFLICT)
        return super().handle_exception(exc)  # type: ignore[misc]


class ReadOnlyViewSet(ScopedViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """List and retrieve, scoped to what the requester may see."""


class ModelViewSet(ScopedViewSetMixin, viewsets.ModelViewSet):
    """Full create, read, update and delete. Each write runs in one transaction and logs one line."""

    def create(self, request, *args, **kwargs):
        with transaction.atomic():
            response = super().create(request, *args, **kwargs)
        self.log_mutation("created", response.data.get("id"))
        return response

    def update(self, request, *args, **kwargs):
        with transaction.atomic():
            response = super().update(request, *args, **kwargs)
        self.log_mutation("updated", kwargs.get(self.lookup_url_kwarg or self.lookup_field))
        return response

    def destroy(self, request, *args, **kwargs):
        with transaction.atomic():
            response = super().destroy(request, *args, **kwargs)
        self.log_mutation("deleted", kwargs.get(self.lookup_url_kwarg or self.lookup_field))
        return response

    def log_mutation(self, verb: str, object_id) -> None:
        model = self.get_queryset().model
        logger.info("API %s %s %s by user %s", verb, model._meta.label_lower, object_id, self.request.user.pk)


def integrity_error_detail(exc: IntegrityError) -> dict:
    """Return a 409 body naming the violated constraint's fields and its human message.

    PostgreSQL reports the constraint name through psycopg's ``diag``, but other databases do not,
    so their conflicts get a generic message under ``non_field_errors``.
    """
    cause = exc.__cause__
    name = getattr(getattr(cause, "diag", None), "constraint_name", None)
    constraint = constraints_by_name().get(name or "")
    if constraint is None:
        return {"non_field_errors": ["The change conflicts with existing data; reload it and retry."]}
    message = str(constraint.violation_error_message)
    fields = list(getattr(constraint, "fields", ()) or ()) or ["non_field_errors"]
    return {field: [message] for field in fields}


@cache
def constraints_by_name() -> dict[str, models.BaseConstraint]:
    """Return every model constraint in the project, by its database name."""
    return {
        constraint.name: constraint
        for model in apps.get_models()
        for constraint in model._meta.constraints
        if constraint.name
    }
