"""Admin for the pool's inventory: where the GPUs are, how many are free, and at what price."""

from django.contrib import admin
from django.db import models
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce
from django.utils.html import format_html_join

from fleet.models import CatalogOffer, Cluster, ClusterCapacity, GpuSku, Provider, Region


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
    list_display = ["name", "region", "provider", "state", "total_gpus", "free_gpus", "gpus_by_sku", "created_at"]
    list_filter = ["state", FreeCapacityFilter, "region__provider", "region", "capacities__sku"]
    list_select_related = ["region__provider"]
    search_fields = ["name", "region__code", "region__provider__name"]
    inlines = [ClusterCapacityInline]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

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

    @admin.display(description="free GPUs", ordering="free_gpus")
    def free_gpus(self, cluster):
        return cluster.free_gpus

    @admin.display(description="free / total by SKU")
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


from fleet import admin_telemetry  # noqa: E402, F401  (registers the telemetry admin)
