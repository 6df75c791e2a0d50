"""Admin for customers, deployments, failover requests and the plans that place deployments.

Deployment writes go through ``placements.services``, so the admin validates like the API and
writes the same audit events. Plans can hold tens of thousands of assignments, so a plan's page
shows totals per provider and region with links to the filtered assignment list, never every row.
Failover decisions go through ``placements.failover`` and re-plans through ``fleet.operations``.
"""

import json
from functools import partial

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Case, Count, F, IntegerField, OuterRef, Subquery, Sum, Value, When
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from compliance.admin import effective_lock_html
from compliance.lock_services import check_regions
from compliance.roles import FAILOVER_DECIDE, LOCK_DELETE, REPLAN
from fleet import operations
from fleet.admin import confirm_with_reason
from fleet.admin_previews import diff_context
from fleet.models import Cluster, Provider, Region
from placements import failover
from placements.admin_overview import overview_link, overview_view
from placements.admin_routes import routes_link, routes_view
from placements.api import POLICY_FIELDS, update_policy, validate_policy
from placements.autoscaling_policy import INTEGER_RANGES, NUMBER_RANGES, error_key, validate_autoscaling
from placements.autoscaling_policy import POLICY_FIELDS as AUTOSCALING_FIELDS
from placements.models import (
    Assignment,
    AutoscalingPolicy,
    Customer,
    DemandOrigin,
    Deployment,
    DeploymentOutcome,
    FailoverRequest,
    FailoverStatus,
    PlacementPlan,
    RegionPreference,
    ScalingDecision,
)
from placements.services import (
    INTEGER_FIELDS,
    create_deployment,
    current_plan,
    delete_deployment,
    deployment_explanation,
    deployment_placement,
    update_deployment,
    validate_demand_origins,
    validate_deployment_fields,
    validate_region_preference,
)

# How many rows a plan's page lists inline before it links to the full changelist.
PLAN_PAGE_ROW_LIMIT = 25
# Scaling decisions a deployment's page lists.
RECENT_DECISIONS = 20


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["name", "display_name", "tier", "deployment_count", "member_count"]
    list_filter = ["tier"]
    search_fields = ["name", "display_name", "members__username"]
    filter_horizontal = ["members"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                deployment_count=Count("deployments", distinct=True), member_count=Count("members", distinct=True)
            )
        )

    @admin.display(description="deployments", ordering="deployment_count")
    def deployment_count(self, customer):
        return customer.deployment_count

    @admin.display(description="members", ordering="member_count")
    def member_count(self, customer):
        return customer.member_count


# Deployments.


class DeploymentAdminForm(forms.ModelForm):
    class Meta:
        model = Deployment
        fields = ["customer", "name", "sku", "alternative_skus", *INTEGER_FIELDS, *POLICY_FIELDS]

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned  # a field failed to parse, so the service checks would repeat its error
        customer = cleaned.get("customer") or (self.instance.customer if self.instance.pk else None)
        # Read-only fields (desired_replicas while autoscaling is on) are not in the form: check the stored value.
        stored = {field: getattr(self.instance, field) for field in INTEGER_FIELDS if field not in cleaned}
        try:
            validate_deployment_fields({**stored, **cleaned}, customer=customer, instance=self.instance)
        except ValidationError as error:
            self.add_error(None, error)
        try:
            validate_policy({field: cleaned[field] for field in POLICY_FIELDS if field in cleaned})
        except ValidationError as error:
            self.add_error(None, error)
        return cleaned


class RegionPreferenceFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        regions = ordered_regions(self)
        try:
            validate_region_preference(regions)
        except ValidationError as error:
            raise ValidationError(error.message_dict["region_preference"]) from error
        # On add, the admin builds the formset on the unsaved deployment that the valid main form filled in.
        deployment = self.instance
        customer = deployment.customer if deployment.customer_id else None
        try:
            check_regions(
                regions,
                customer=customer,
                deployment=deployment if deployment.pk else None,
                field_name="region_preference",
            )
        except ValidationError as error:
            raise ValidationError(error.message_dict["region_preference"]) from error


class DemandOriginFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        try:
            validate_demand_origins(origin_rows(self))
        except ValidationError as error:
            raise ValidationError(error.message_dict["demand_origins"]) from error


def kept_forms(formset) -> list:
    """Return the inline forms that contain a row to save: filled in and not marked for deletion."""
    return [
        form
        for form in formset.forms
        if form.cleaned_data and not form.cleaned_data.get("DELETE") and form not in formset.deleted_forms
    ]


def ordered_regions(formset) -> list:
    rows = sorted(kept_forms(formset), key=lambda form: form.cleaned_data.get("rank") or 0)
    return [form.cleaned_data["region"] for form in rows if form.cleaned_data.get("region")]


def origin_rows(formset) -> list[dict]:
    fields = ["name", "country_code", "latitude", "longitude", "share"]
    return [{field: form.cleaned_data.get(field) for field in fields} for form in kept_forms(formset)]


class AutoscalingPolicyForm(forms.ModelForm):
    """One policy row: the services' bounds as the inputs' min and max, and their errors by field."""

    class Meta:
        model = AutoscalingPolicy
        fields = list(AUTOSCALING_FIELDS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field, (low, high) in INTEGER_RANGES.items():
            self.fields[field].widget.attrs.update(min=low, max=high)
        for field, (low, high) in NUMBER_RANGES.items():
            # The lower bound is exclusive, which HTML cannot express: the services reject the bound itself.
            self.fields[field].widget.attrs.update(min=low, step="any")
            if high is not None:
                self.fields[field].widget.attrs["max"] = high

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned  # a field failed to parse, so the service checks would repeat its error
        try:
            validate_autoscaling({field: cleaned.get(field) for field in AUTOSCALING_FIELDS})
        except ValidationError as error:
            for key, messages in error.message_dict.items():
                field = key.removeprefix(error_key(""))
                for message in messages:
                    self.add_error(field if field in self.fields else None, message)
        return cleaned


class AutoscalingPolicyFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        for form in kept_forms(self):
            values = {field: form.cleaned_data.get(field) for field in AUTOSCALING_FIELDS}
            if not values["enabled"] or "min_replicas" not in self.data:
                continue
            # The deployment's own fields are in the same POST; the services check the pair again on save.
            min_replicas = self.data.get("min_replicas")
            if not values["scale_to_zero"] and min_replicas == "0":
                raise ValidationError("min_replicas 0 needs scale to zero: tick it, or set min replicas to at least 1.")
            if values["scale_to_zero"] and min_replicas != "0":
                form.add_error(
                    "scale_to_zero",
                    f"Scale to zero needs min_replicas 0, but min_replicas is {min_replicas}: set min replicas to 0, "
                    "or untick scale to zero.",
                )


def autoscaling_data(formset) -> dict | None:
    """Return the inline's policy as service data, or None when its row is deleted or left empty."""
    rows = kept_forms(formset)
    if not rows:
        return None
    return {field: rows[0].cleaned_data[field] for field in AUTOSCALING_FIELDS}


class AutoscalingPolicyInline(admin.StackedInline):
    model = AutoscalingPolicy
    form = AutoscalingPolicyForm
    formset = AutoscalingPolicyFormSet
    fields = list(AUTOSCALING_FIELDS)
    extra = 0
    max_num = 1
    verbose_name = "autoscaling policy"


class RegionPreferenceInline(admin.TabularInline):
    model = RegionPreference
    formset = RegionPreferenceFormSet
    fields = ["rank", "region"]
    extra = 0
    ordering = ["rank"]


class DemandOriginInline(admin.TabularInline):
    model = DemandOrigin
    formset = DemandOriginFormSet
    fields = ["name", "country_code", "latitude", "longitude", "share"]
    extra = 0


class PlacementStateFilter(admin.SimpleListFilter):
    """Deployments bucketed by what the current plan did for them."""

    title = "current placement"
    parameter_name = "placement"

    def lookups(self, request, model_admin):
        return [("short", "Short of replicas"), ("placed", "Fully placed"), ("unplanned", "Not in the current plan")]

    def queryset(self, request, queryset):
        if self.value() == "short":
            return queryset.filter(current_unmet__gt=0)
        if self.value() == "placed":
            return queryset.filter(current_unmet=0)
        if self.value() == "unplanned":
            return queryset.filter(current_unmet__isnull=True)
        return queryset


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    form = DeploymentAdminForm
    inlines = [AutoscalingPolicyInline, RegionPreferenceInline, DemandOriginInline]
    list_display = [
        "name",
        "customer",
        "tier",
        "sku",
        "gpus_per_replica",
        "min_replicas",
        "desired_replicas",
        "max_replicas",
        "current_placed",
        "current_unmet",
        "condition",
        "failover_policy",
    ]
    list_filter = [
        PlacementStateFilter,
        "condition",
        "failover_policy",
        "spread_mode",
        "customer__tier",
        "sku",
        "customer",
    ]
    list_select_related = ["customer", "sku"]
    search_fields = ["name", "customer__name"]
    filter_horizontal = ["alternative_skus"]
    readonly_fields = [
        "condition",
        "condition_reason",
        "condition_since",
        "current_placement",
        "current_explanation",
        "recent_scaling",
        "effective_lock",
        overview_link,
        routes_link,
        "created_at",
        "updated_at",
    ]

    def get_urls(self):
        routes = self.admin_site.admin_view(partial(routes_view, self))
        overview = self.admin_site.admin_view(partial(overview_view, self))
        return [
            path("<int:object_id>/routes/", routes, name="placements_deployment_routes"),
            path("<int:object_id>/overview/", overview, name="placements_deployment_overview"),
            *super().get_urls(),
        ]

    def get_queryset(self, request):
        outcomes = DeploymentOutcome.objects.filter(plan=current_plan(), deployment=OuterRef("pk"))
        return (
            super()
            .get_queryset(request)
            .annotate(
                current_placed=Subquery(outcomes.values("placed_replicas")[:1]),
                current_unmet=Subquery(outcomes.values("unmet_replicas")[:1]),
            )
        )

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is None:
            return fields
        if AutoscalingPolicy.objects.filter(deployment=obj, enabled=True).exists():
            fields.append("desired_replicas")
        return ["customer", *fields]

    @admin.display(description="tier", ordering="customer__tier")
    def tier(self, deployment):
        return deployment.customer.get_tier_display()

    @admin.display(description="placed", ordering="current_placed")
    def current_placed(self, deployment):
        return deployment.current_placed

    @admin.display(description="unmet", ordering="current_unmet")
    def current_unmet(self, deployment):
        return deployment.current_unmet

    @admin.display(description="placement in the current plan")
    def current_placement(self, deployment):
        if deployment.pk is None:
            return "-"
        placement = deployment_placement(deployment)
        if placement["plan_version"] is None:
            return "No plan has been applied yet."
        header = format_html(
            "Plan v{}: {} placed, {} unmet.",
            placement["plan_version"],
            placement["placed_replicas"],
            "unknown" if placement["unmet_replicas"] is None else placement["unmet_replicas"],
        )
        rows = format_html_join(
            "",
            "<li>{} ({}, {}): {} x {}</li>",
            (
                (row["cluster"], row["region"], row["provider"], row["replicas"], row["sku"])
                for row in placement["assignments"]
            ),
        )
        return format_html("{}<ul>{}</ul>", header, rows)

    @admin.display(description="effective lock")
    def effective_lock(self, deployment):
        if deployment.pk is None:
            return "-"
        return effective_lock_html(deployment)

    @admin.display(description="recent scaling decisions")
    def recent_scaling(self, deployment):
        if deployment.pk is None:
            return "-"
        decisions = ScalingDecision.objects.filter(deployment=deployment).select_related("plan")
        rows = list(decisions.order_by("-decided_at")[:RECENT_DECISIONS])
        if not rows:
            return "The autoscaler has not changed this deployment."
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{}: {} -> {} ({}){}</li>",
                (
                    (
                        f"{row.decided_at:%Y-%m-%d %H:%M:%S}",
                        row.from_replicas,
                        row.to_replicas,
                        row.reason,
                        f", plan v{row.plan.version}" if row.plan else "",
                    )
                    for row in rows
                ),
            ),
        )

    @admin.display(description="explanation from the current plan")
    def current_explanation(self, deployment):
        if deployment.pk is None:
            return "-"
        explanation = deployment_explanation(deployment)["explanation"]
        if explanation is None:
            return "The current plan has no explanation for this deployment."
        return format_html("<pre>{}</pre>", json.dumps(explanation, indent=2, sort_keys=True))

    # Writes go through the services. The admin passes the inline rows to them instead of saving them itself.

    def save_model(self, request, obj, form, change):
        """Do nothing here: ``save_related`` saves the deployment and its inlines in one service call."""

    def save_related(self, request, form, formsets, change):
        fields = ["name", "sku", *INTEGER_FIELDS]
        data = {field: form.cleaned_data[field] for field in fields if field in form.cleaned_data}
        data["alternative_skus"] = list(form.cleaned_data["alternative_skus"])
        for formset in formsets:
            if isinstance(formset, RegionPreferenceFormSet):
                data["region_preference"] = ordered_regions(formset)
            elif isinstance(formset, DemandOriginFormSet):
                data["demand_origins"] = origin_rows(formset)
            elif isinstance(formset, AutoscalingPolicyFormSet):
                data["autoscaling"] = autoscaling_data(formset)
        if data.get("autoscaling") and data["autoscaling"]["enabled"]:
            # The autoscaler owns desired replicas: the services keep the stored value within min and max.
            data.pop("desired_replicas", None)
        if change:
            saved = update_deployment(actor=request.user, deployment=form.instance, data=data)
        else:
            saved = create_deployment(actor=request.user, customer=form.cleaned_data["customer"], data=data)
        policy = {field: form.cleaned_data[field] for field in POLICY_FIELDS if field in form.cleaned_data}
        update_policy(actor=request.user, deployment=saved, values=policy)
        # The admin logs and redirects with the form's instance, so give it the saved row's key.
        form.instance.pk = saved.pk

    def construct_change_message(self, request, form, formsets, add=False):
        # The services saved the inline rows, so the formsets never recorded what they changed.
        return super().construct_change_message(request, form, [], add)

    def has_delete_permission(self, request, obj=None):
        # Deleting a deployment deletes its own locks, which only compliance staff may delete.
        if obj is not None and obj.locks.exists() and not request.user.has_perm(LOCK_DELETE):
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request, obj):
        delete_deployment(actor=request.user, deployment=obj, reason="Deleted in the admin.")

    def delete_queryset(self, request, queryset):
        for deployment in queryset:
            try:
                delete_deployment(actor=request.user, deployment=deployment, reason="Deleted in the admin.")
            except ValidationError as error:
                self.message_user(request, " ".join(error.messages), messages.ERROR)


# Plans, their assignments and outcomes: written only by the scheduler, so read-only here.


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class PlanFilter(admin.SimpleListFilter):
    """Rows of one plan. The filter lists the latest plans and accepts any plan id in the URL."""

    title = "plan"
    parameter_name = "plan"

    def lookups(self, request, model_admin):
        plans = PlacementPlan.objects.order_by("-version")[:PLAN_PAGE_ROW_LIMIT]
        return [(str(plan.pk), str(plan)) for plan in plans]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(plan_id=self.value())
        return queryset


class ReplanPreviewForm(forms.Form):
    """What-ifs for a previewed re-plan; each one is optional."""

    exclude_provider = forms.ModelChoiceField(
        Provider.objects.all(), required=False, to_field_name="name", help_text="Treat this provider as down."
    )
    exclude_region = forms.ModelChoiceField(
        Region.objects.select_related("provider"), required=False, help_text="Treat this region as down."
    )
    drain_clusters = forms.ModelMultipleChoiceField(
        Cluster.objects.all(), required=False, to_field_name="name", help_text="Treat these clusters as draining."
    )
    cordon_clusters = forms.ModelMultipleChoiceField(
        Cluster.objects.all(), required=False, to_field_name="name", help_text="Treat these clusters as cordoned."
    )

    def clean(self):
        cleaned = super().clean()
        both = {cluster.name for cluster in cleaned.get("drain_clusters") or []} & {
            cluster.name for cluster in cleaned.get("cordon_clusters") or []
        }
        if both:
            self.add_error("cordon_clusters", f"{sorted(both)} also selected to drain; select each cluster once.")
        return cleaned

    def what_ifs(self) -> dict:
        cleaned = self.cleaned_data
        provider, region = cleaned.get("exclude_provider"), cleaned.get("exclude_region")
        return {
            "exclude_providers": [provider.name] if provider else [],
            "exclude_regions": [str(region)] if region else [],
            "drain_clusters": sorted(cluster.name for cluster in cleaned.get("drain_clusters") or []),
            "cordon_clusters": sorted(cluster.name for cluster in cleaned.get("cordon_clusters") or []),
        }


def require_permission(request, permission: str) -> None:
    """Raise ``PermissionDenied`` (403) unless the user has ``permission``; admin views check only staff status."""
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"This page needs the permission {permission} (the ops role).")


@admin.register(PlacementPlan)
class PlacementPlanAdmin(ReadOnlyAdmin):
    list_display = [
        "version",
        "status",
        "trigger",
        "objective_shown",
        "gap_shown",
        "solver",
        "solver_status",
        "solve_seconds_shown",
        "created_at",
        "applied_at",
    ]
    list_filter = ["status", "trigger", "solver"]
    search_fields = ["version", "solver_status", "error"]
    readonly_fields = ["placement_by_location", "shortfalls"]
    fieldsets = [
        (None, {"fields": ["version", "status", "trigger", "created_at", "applied_at", "parameters"]}),
        (
            "Solution",
            {
                "fields": [
                    "objective",
                    "objective_terms",
                    "bound",
                    "gap",
                    "greedy_objective",
                    "solver",
                    "solver_status",
                    "build_seconds",
                    "solve_seconds",
                    "inputs_digest",
                    "summary",
                    "error",
                ]
            },
        ),
        ("Placement", {"fields": ["placement_by_location", "shortfalls"]}),
    ]

    @admin.display(description="objective", ordering="objective")
    def objective_shown(self, plan):
        return "-" if plan.objective is None else f"{plan.objective:,.2f}"

    @admin.display(description="gap", ordering="gap")
    def gap_shown(self, plan):
        return "-" if plan.gap is None else f"{plan.gap:.2%}"

    @admin.display(description="solve seconds", ordering="solve_seconds")
    def solve_seconds_shown(self, plan):
        return "-" if plan.solve_seconds is None else f"{plan.solve_seconds:.2f}"

    def get_urls(self):
        urls = [
            path("preview/", self.admin_site.admin_view(self.preview_view), name="placements_placementplan_preview"),
            path(
                "apply-replan/",
                self.admin_site.admin_view(self.apply_replan_view),
                name="placements_placementplan_apply_replan",
            ),
        ]
        return urls + super().get_urls()

    def preview_view(self, request):
        """Run a dry-run re-plan with optional what-ifs and show how it differs from the current plan."""
        require_permission(request, REPLAN)
        form = ReplanPreviewForm(request.POST or None)
        preview = None
        if request.method == "POST" and form.is_valid():
            try:
                preview = operations.preview_replan(actor=request.user, **form.what_ifs())
            except operations.OperationError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
        context = {
            **self.admin_site.each_context(request),
            **diff_context(preview),
            "title": "Preview a re-plan",
            "opts": self.model._meta,
            "form": form,
        }
        return TemplateResponse(request, "admin/placements/placementplan/preview.html", context)

    def apply_replan_view(self, request):
        """Preview a re-plan of the current state, then plan and apply it once ``confirm`` is posted; POST only.

        The applied plan is solved again at apply time: a stored dry-run plan is never applied, because
        applying also writes failover requests and conditions from the state read under the scheduler lock.
        """
        require_permission(request, REPLAN)
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:placements_placementplan_preview"))
        if "confirm" not in request.POST:
            return self.apply_replan_confirmation(request)
        try:
            plan = operations.apply_replan(actor=request.user)
        except ValueError as error:
            self.message_user(request, f"The re-plan failed: {error}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:placements_placementplan_preview"))
        self.message_user(
            request,
            f"Applied plan v{plan.version}: {plan.summary.get('placed_replicas')} replicas placed, "
            f"{plan.summary.get('unmet_replicas')} unmet. Its execution is enqueued.",
            messages.SUCCESS,
        )
        self.report_difference_from_preview(request, plan, request.POST.get("previewed_plan"))
        return HttpResponseRedirect(reverse("admin:placements_placementplan_change", args=[plan.pk]))

    def apply_replan_confirmation(self, request):
        """Render the dry-run preview of a re-plan without what-ifs, with the button that applies it."""
        try:
            preview = operations.preview_replan(actor=request.user)
        except ValueError as error:
            self.message_user(request, f"The preview failed: {error}", messages.ERROR)
            preview = None
        context = {
            **self.admin_site.each_context(request),
            **diff_context(preview),
            "title": "Apply a re-plan",
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/placements/placementplan/apply_replan.html", context)

    def report_difference_from_preview(self, request, plan, previewed_id) -> None:
        """Report whether the applied plan places every replica as the dry run the operator confirmed; warn if not."""
        from placements.models import PlanStatus
        from placements.planning import diff_plans

        if not (previewed_id or "").isdigit():
            return
        previewed = PlacementPlan.objects.filter(pk=previewed_id, status=PlanStatus.DRY_RUN).first()
        if previewed is None:
            return
        diff = diff_plans(previewed, plan)
        if diff.added or diff.removed:
            self.message_user(
                request,
                f"Plan v{plan.version} differs from the previewed dry run v{previewed.version}: {diff.added} replicas "
                f"added and {diff.removed} removed in {diff.deployments_changed} deployments, usually because the "
                "fleet or the deployments changed after the preview.",
                messages.WARNING,
            )
        else:
            self.message_user(
                request, f"Plan v{plan.version} places every replica as the previewed dry run v{previewed.version}."
            )

    @admin.display(description="replicas by provider and region")
    def placement_by_location(self, plan):
        rows = (
            Assignment.objects.filter(plan=plan)
            .values("cluster__region_id", "cluster__region__provider__name", "cluster__region__code")
            .annotate(replicas=Sum("replicas"), assignments=Count("pk"))
            .order_by("cluster__region__provider__name", "cluster__region__code")
        )
        changelist = reverse("admin:placements_assignment_changelist")
        return (
            format_html_join(
                "",
                '<div><a href="{}?{}">{}/{}</a>: {} replicas in {} assignments</div>',
                (
                    (
                        changelist,
                        urlencode({"plan": plan.pk, "cluster__region__id__exact": row["cluster__region_id"]}),
                        row["cluster__region__provider__name"],
                        row["cluster__region__code"],
                        row["replicas"],
                        row["assignments"],
                    )
                    for row in rows
                ),
            )
            or "No assignments."
        )

    @admin.display(description="deployments short of replicas")
    def shortfalls(self, plan):
        short = (
            DeploymentOutcome.objects.filter(plan=plan, unmet_replicas__gt=0)
            .select_related("deployment__customer")
            .order_by("-unmet_replicas")
        )
        total = short.count()
        changelist = reverse("admin:placements_deploymentoutcome_changelist")
        link = format_html(
            '<a href="{}?{}">All {} outcomes short of replicas</a>',
            changelist,
            urlencode({"plan": plan.pk, "short": "yes"}),
            total,
        )
        rows = format_html_join(
            "",
            "<li>{}: {} unmet, {} placed</li>",
            (
                (outcome.deployment, outcome.unmet_replicas, outcome.placed_replicas)
                for outcome in short[:PLAN_PAGE_ROW_LIMIT]
            ),
        )
        return format_html("<ul>{}</ul>{}", rows, link)


@admin.register(Assignment)
class AssignmentAdmin(ReadOnlyAdmin):
    list_display = ["plan", "deployment", "cluster", "provider", "region", "sku", "replicas"]
    list_filter = [PlanFilter, "cluster__region__provider", "cluster__region", "sku"]
    list_select_related = ["plan", "deployment__customer", "cluster__region__provider", "sku"]
    search_fields = ["deployment__name", "deployment__customer__name", "cluster__name"]
    list_per_page = 100
    # Counting every assignment of every plan is slow once plans contain many rows.
    show_full_result_count = False

    @admin.display(description="provider", ordering="cluster__region__provider__name")
    def provider(self, assignment):
        return assignment.cluster.region.provider

    @admin.display(description="region", ordering="cluster__region__code")
    def region(self, assignment):
        return assignment.cluster.region


class ShortOfReplicasFilter(admin.SimpleListFilter):
    title = "short of replicas"
    parameter_name = "short"

    def lookups(self, request, model_admin):
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(unmet_replicas__gt=0)
        if self.value() == "no":
            return queryset.filter(unmet_replicas=0)
        return queryset


@admin.register(DeploymentOutcome)
class DeploymentOutcomeAdmin(ReadOnlyAdmin):
    list_display = ["plan", "deployment", "placed_replicas", "unmet_replicas"]
    list_filter = [PlanFilter, ShortOfReplicasFilter, "deployment__customer__tier"]
    list_select_related = ["plan", "deployment__customer"]
    search_fields = ["deployment__name", "deployment__customer__name"]
    readonly_fields = ["explanation_text"]
    fields = ["plan", "deployment", "placed_replicas", "unmet_replicas", "explanation_text"]
    show_full_result_count = False

    @admin.display(description="explanation")
    def explanation_text(self, outcome):
        return format_html("<pre>{}</pre>", json.dumps(outcome.explanation, indent=2, sort_keys=True))


# Failover requests: created by planning, decided by staff through placements.failover.


@admin.register(FailoverRequest)
class FailoverRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "deployment",
        "kind",
        "status",
        "replicas",
        "cluster_names",
        "created_at",
        "deadline",
        "decided_by_label",
        "decided_at",
    ]
    list_filter = ["status", "kind", "deployment__customer__tier", "deployment__customer"]
    list_select_related = ["deployment__customer"]
    search_fields = ["deployment__name", "deployment__customer__name", "reason", "decision_reason"]
    actions = ["approve_requests", "reject_requests"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("clusters")

    def get_ordering(self, request):
        # Pending requests first, the nearest deadline first among them; then the newest decisions.
        pending_first = Case(
            When(status=FailoverStatus.PENDING, then=Value(0)), default=Value(1), output_field=IntegerField()
        )
        return [pending_first.asc(), F("deadline").asc(nulls_last=True), "-created_at"]

    def has_decide_permission(self, request) -> bool:
        return request.user.has_perm(FAILOVER_DECIDE)

    @admin.display(description="clusters")
    def cluster_names(self, failover_request):
        return ", ".join(sorted(cluster.name for cluster in failover_request.clusters.all()))

    @admin.action(description="Approve the selected pending requests", permissions=["decide"])
    def approve_requests(self, request, queryset):
        return confirm_with_reason(
            self,
            request,
            queryset,
            title="Approve failover requests",
            description="A re-plan that carries out the moves, make-before-break, is enqueued.",
            operation=failover.approve,
            done="Approved",
        )

    @admin.action(description="Reject the selected pending requests", permissions=["decide"])
    def reject_requests(self, request, queryset):
        return confirm_with_reason(
            self,
            request,
            queryset,
            title="Reject failover requests",
            description="The replicas stay where they are; the deployments stay degraded until their clusters recover.",
            operation=failover.reject,
            done="Rejected",
        )
