"""Admin for the pool's inventory (where the GPUs are, how many are free, at what price), outages and alerts.

Cluster state changes and outages go through ``fleet.operations``: each admin action requests a
reason on a confirmation page, so every change is audited and re-planned like the API's. The actions
need the same permissions as the API's (the ops role, see ``compliance.roles``). Draining or cordoning
clusters and declaring an outage first show a dry-run preview of the re-plan (``fleet.admin_previews``).
"""

from functools import partial

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html_join

from compliance.roles import OUTAGE_CLEAR
from fleet import operations
from fleet.admin_previews import cluster_action_preview, outage_preview_response
from fleet.availability import AvailabilityReader
from fleet.models import (
    Alert,
    CatalogOffer,
    Cluster,
    ClusterCapacity,
    GpuSku,
    Outage,
    OutageScope,
    Provider,
    Region,
)

# Actions that ask for a reason: a confirmation page like Django's "delete selected", with a reason field.


class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        required=False,
        help_text="Why; stored in the audit trail with your user name.",
    )

    def clean_reason(self):
        try:
            return operations.clean_reason(self.cleaned_data.get("reason"))
        except operations.OperationError as error:
            raise forms.ValidationError(error.message) from error


def confirm_with_reason(
    modeladmin, request, queryset, *, title: str, description: str, operation, done: str, preview=None
):
    """Run ``operation(row, actor=..., reason=...)`` on each selected row once the confirmation page has a reason.

    Returns the confirmation page until a valid reason is posted with its ``confirm`` button, then
    None, so the admin goes back to the changelist. A row the operation rejects (a ``ValueError``)
    is reported and skipped; the others still change, each in its own transaction. ``preview``, if
    given, is called as ``preview(queryset, actor=...)`` each time the page is shown, and returns
    context for the page, such as a dry-run plan's difference; it must change nothing.
    """
    form = ReasonForm(request.POST if request.POST.get("confirm") else None)
    if form.is_bound and form.is_valid():
        changed = 0
        for row in queryset:
            try:
                operation(row, actor=request.user, reason=form.cleaned_data["reason"])
            except ValueError as error:
                modeladmin.message_user(request, f"{row}: {error}", messages.ERROR)
            else:
                changed += 1
        if changed:
            modeladmin.message_user(request, f"{done}: {changed} of {len(queryset)}.", messages.SUCCESS)
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "description": description,
        "queryset": queryset,
        "form": form,
        "opts": modeladmin.model._meta,
        "action_name": request.POST.get("action", ""),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "submit_label": title,
    }
    if preview is not None:
        context.update(preview(queryset, actor=request.user))
    return TemplateResponse(request, "admin/fleet/reason_action.html", context)


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ["name", "display_name", "region_count", "cluster_count"]
    search_fields = ["name", "display_name"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                region_count=Count("regions", distinct=True),
                cluster_count=Count("regions__clusters", distinct=True),
            )
        )

    @admin.display(description="regions", ordering="region_count")
    def region_count(self, provider):
        return provider.region_count

    @admin.display(description="clusters", ordering="cluster_count")
    def cluster_count(self, provider):
        return provider.cluster_count


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "provider",
        "city",
        "country_code",
        "jurisdiction",
        "latitude",
        "longitude",
        "location_source",
        "cluster_count",
    ]
    list_filter = ["provider", "jurisdiction", "location_source", "country_code"]
    list_select_related = ["provider"]
    search_fields = ["code", "display_name", "city", "country", "provider__name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(cluster_count=Count("clusters"))

    @admin.display(description="clusters", ordering="cluster_count")
    def cluster_count(self, region):
        return region.cluster_count


@admin.register(GpuSku)
class GpuSkuAdmin(admin.ModelAdmin):
    list_display = ["name", "memory_gib", "aliases", "total_gpus"]
    search_fields = ["name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(total_gpus=Coalesce(Sum("capacities__total_gpus"), 0))

    @admin.display(description="GPUs in the pool", ordering="total_gpus")
    def total_gpus(self, sku):
        return sku.total_gpus


class ClusterCapacityInline(admin.TabularInline):
    model = ClusterCapacity
    extra = 0
    fields = ["sku", "total_gpus", "allocatable_gpus", "in_use_gpus", "hourly_price_per_gpu", "pricing_model"]


class FreeCapacityFilter(admin.SimpleListFilter):
    """Clusters bucketed by whether any of their GPUs are still free."""

    title = "free GPUs"
    parameter_name = "free"

    def lookups(self, request, model_admin):
        return [("none", "None free"), ("some", "Some free"), ("no_capacity", "No capacity rows")]

    def queryset(self, request, queryset):
        if self.value() == "none":
            return queryset.filter(total_gpus__gt=0, free_gpus__lte=0)
        if self.value() == "some":
            return queryset.filter(free_gpus__gt=0)
        if self.value() == "no_capacity":
            return queryset.filter(capacities__isnull=True)
        return queryset


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "region",
        "provider",
        "state",
        "health",
        "placement",
        "health_changed_at",
        "total_gpus",
        "free_gpus",
        "gpus_by_sku",
        "last_heartbeat_at",
    ]
    list_filter = ["state", "health", FreeCapacityFilter, "region__provider", "region", "capacities__sku"]
    list_select_related = ["region__provider"]
    search_fields = ["name", "region__code", "region__provider__name"]
    inlines = [ClusterCapacityInline]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    actions = ["cordon_clusters", "uncordon_clusters", "drain_clusters"]
    # Health is judged by MCM from heartbeats; the operator's state changes through the actions.
    health_fields = [
        "placement",
        "health",
        "health_reason",
        "health_changed_at",
        "healthy_since",
        "first_missed_heartbeat_at",
        "last_heartbeat_at",
        "consecutive_failures",
        "consecutive_successes",
    ]

    @admin.display(description="Placement")
    def placement(self, cluster: Cluster) -> str:
        """Return what placement may do with the cluster now, so an outage or a failback wait shows."""
        # Rows of one page share a reader, so the outages are read about once per page.
        reader = getattr(self, "_availability_reader", None)
        if reader is None or (timezone.now() - reader.now).total_seconds() > 1:
            reader = self._availability_reader = AvailabilityReader()
        state = reader(cluster)
        return state.mode if state.reason == state.mode else f"{state.mode} ({state.reason})"

    def get_readonly_fields(self, request, obj=None):
        fields = [*super().get_readonly_fields(request, obj), *self.health_fields]
        return [*fields, "state"] if obj is not None else fields

    @admin.action(description="Cordon: place no new replicas on the selected clusters", permissions=["change"])
    def cordon_clusters(self, request, queryset):
        return confirm_with_reason(
            self,
            request,
            queryset,
            title="Cordon clusters",
            description="No new replicas will be placed on these clusters; the replicas running there stay.",
            operation=operations.cordon,
            done="Cordoned",
            preview=partial(cluster_action_preview, action="cordon"),
        )

    @admin.action(description="Uncordon: make the selected clusters active again", permissions=["change"])
    def uncordon_clusters(self, request, queryset):
        return confirm_with_reason(
            self,
            request,
            queryset,
            title="Uncordon clusters",
            description="These clusters become active: the next plan may place replicas on them again.",
            operation=operations.uncordon,
            done="Uncordoned",
        )

    @admin.action(description="Drain: move every replica off the selected clusters", permissions=["change"])
    def drain_clusters(self, request, queryset):
        return confirm_with_reason(
            self,
            request,
            queryset,
            title="Drain clusters",
            description="The next plan moves every replica off these clusters. New replicas are ready "
            "elsewhere before the old ones stop.",
            operation=operations.drain,
            done="Draining",
            preview=partial(cluster_action_preview, action="drain"),
        )

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .prefetch_related("capacities__sku")
            .annotate(
                total_gpus=Coalesce(Sum("capacities__total_gpus"), 0),
                free_gpus=Coalesce(Sum(F("capacities__allocatable_gpus") - F("capacities__in_use_gpus")), 0),
            )
        )

    @admin.display(description="provider", ordering="region__provider__name")
    def provider(self, cluster):
        return cluster.region.provider

    @admin.display(description="GPUs", ordering="total_gpus")
    def total_gpus(self, cluster):
        return cluster.total_gpus

    # "For MCM" is allocatable minus other workloads' GPUs: MCM's own replicas are counted by the
    # plans, not here, so a cluster full of MCM's replicas still shows all its GPUs.
    @admin.display(description="GPUs for MCM", ordering="free_gpus")
    def free_gpus(self, cluster):
        return cluster.free_gpus

    @admin.display(description="for MCM / total, by SKU")
    def gpus_by_sku(self, cluster):
        return format_html_join(
            ", ",
            "{}: {}/{}",
            ((capacity.sku.name, capacity.free_gpus, capacity.total_gpus) for capacity in cluster.capacities.all()),
        )


class OverCommittedFilter(admin.SimpleListFilter):
    """Capacity rows with no free GPUs left for MCM's replicas."""

    title = "free GPUs"
    parameter_name = "free"

    def lookups(self, request, model_admin):
        return [("none", "None free"), ("some", "Some free")]

    def queryset(self, request, queryset):
        exhausted = Q(in_use_gpus__gte=F("allocatable_gpus"))
        if self.value() == "none":
            return queryset.filter(exhausted)
        if self.value() == "some":
            return queryset.exclude(exhausted)
        return queryset


@admin.register(ClusterCapacity)
class ClusterCapacityAdmin(admin.ModelAdmin):
    list_display = [
        "cluster",
        "provider",
        "region",
        "sku",
        "total_gpus",
        "allocatable_gpus",
        "in_use_gpus",
        "free_gpus",
        "hourly_price_per_gpu",
        "pricing_model",
        "updated_at",
    ]
    list_filter = [
        "sku",
        "cluster__region__provider",
        "cluster__region",
        "pricing_model",
        "cluster__state",
        OverCommittedFilter,
    ]
    list_select_related = ["cluster__region__provider", "sku"]
    search_fields = ["cluster__name", "sku__name", "cluster__region__code"]
    readonly_fields = ["updated_at"]

    @admin.display(description="provider", ordering="cluster__region__provider__name")
    def provider(self, capacity):
        return capacity.cluster.region.provider

    @admin.display(description="region", ordering="cluster__region__code")
    def region(self, capacity):
        return capacity.cluster.region

    @admin.display(description="free GPUs")
    def free_gpus(self, capacity):
        return capacity.free_gpus


@admin.register(CatalogOffer)
class CatalogOfferAdmin(admin.ModelAdmin):
    list_display = ["instance_type", "region", "sku", "gpu_count", "price", "spot_price", "source_file"]
    list_filter = ["sku", "region__provider", "region"]
    list_select_related = ["region__provider", "sku"]
    search_fields = ["instance_type", "region__code"]


# Outages and alerts.


class OpenFilter(admin.SimpleListFilter):
    """Rows still open (``<field>`` empty) or closed."""

    title = "open"
    parameter_name = "open"
    closed_field = "cleared_at"

    def lookups(self, request, model_admin):
        return [("yes", "Open"), ("no", "Closed")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(**{f"{self.closed_field}__isnull": True})
        if self.value() == "no":
            return queryset.filter(**{f"{self.closed_field}__isnull": False})
        return queryset


class AlertOpenFilter(OpenFilter):
    closed_field = "resolved_at"


class OutageDeclareForm(forms.ModelForm):
    class Meta:
        model = Outage
        fields = ["scope", "cluster", "region", "provider", "reason"]
        help_texts = {
            "cluster": "For a cluster outage only.",
            "region": "For a region outage only.",
            "provider": "For a provider outage only.",
            "reason": "Why; stored in the audit trail with your user name.",
        }
        # Name the field and the rejected value, as the API's errors do.
        error_messages = {
            "scope": {"invalid_choice": "scope %(value)r is not valid: choose cluster, region or provider."},
            **{
                scope: {"invalid_choice": f"{scope} %(value)r not found: choose one of the listed {scope}s."}
                for scope in OutageScope.values
            },
        }

    def clean(self):
        cleaned = super().clean()
        scope = cleaned.get("scope")
        if self.errors or scope is None:
            return cleaned
        for other in OutageScope.values:
            if other != scope and cleaned.get(other) is not None:
                self.add_error(other, f"{cleaned[other]} does not apply to a {scope} outage; leave it empty.")
        try:
            cleaned["reason"] = operations.check_outage(
                scope=scope, target=cleaned.get(scope), reason=cleaned.get("reason")
            )
        except operations.OperationError as error:
            self.add_error(error.field if error.field in self.fields else None, error.message)
        return cleaned


@admin.register(Outage)
class OutageAdmin(admin.ModelAdmin):
    """Outages: staff declare one with the add form and clear it with the action; rows are never edited."""

    form = OutageDeclareForm
    add_form_template = "admin/fleet/outage_add_form.html"
    list_display = ["__str__", "scope", "target", "source", "declared_by", "started_at", "cleared_at", "cleared_by"]
    list_filter = [OpenFilter, "scope", "source"]
    list_select_related = ["cluster", "region__provider", "provider"]
    search_fields = ["cluster__name", "region__code", "provider__name", "reason", "declared_by"]
    actions = ["clear_outages"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="target")
    def target(self, outage):
        return outage.target

    def add_view(self, request, form_url="", extra_context=None):
        """Show a dry-run preview of a valid declaration; declare it only when the preview's ``confirm`` is posted.

        An invalid form goes to the admin's add view, which shows the errors and saves nothing.
        """
        if request.method == "POST" and "confirm" not in request.POST:
            if not self.has_add_permission(request):
                raise PermissionDenied
            form = self.get_form(request)(request.POST)
            if form.is_valid():
                return outage_preview_response(self, request, form)
        return super().add_view(request, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        outage = operations.declare_outage(
            scope=data["scope"], target=data[data["scope"]], actor=request.user, reason=data["reason"]
        )
        # The admin logs the addition and redirects with the form's instance, so give it the stored row.
        obj.pk = outage.pk
        obj.declared_by = outage.declared_by
        obj.source = outage.source

    def has_clear_permission(self, request) -> bool:
        return request.user.has_perm(OUTAGE_CLEAR)

    @admin.action(description="Clear the selected outages", permissions=["clear"])
    def clear_outages(self, request, queryset):
        return confirm_with_reason(
            self,
            request,
            queryset,
            title="Clear outages",
            description="The clusters these outages cover count as recovering, and replicas return to them after "
            "the failback period.",
            operation=operations.clear_outage,
            done="Cleared",
        )


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    """Alerts are raised and resolved by MCM, so the admin only shows them."""

    list_display = ["kind", "severity", "subject_label", "message", "raised_at", "resolved_at"]
    list_filter = [AlertOpenFilter, "severity", "kind"]
    search_fields = ["kind", "subject_label", "message"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


from fleet import admin_telemetry  # noqa: E402, F401  (registers the telemetry admin)
