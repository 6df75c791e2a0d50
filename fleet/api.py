"""Read-only API over the pool's inventory: providers, regions, GPU SKUs, clusters and capacity."""

import django_filters
from django.db.models import Q
from rest_framework import serializers

from fleet.models import Cluster, ClusterCapacity, ClusterState, GpuSku, PricingModel, Provider, Region
from mcm_site.api import ReadOnlyViewSet

# Serializers. Cluster credentials and API endpoints stay out: fields are listed one by one.


class ProviderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Provider
        fields = ["id", "name", "display_name"]


class RegionSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(source="provider.name", read_only=True)
    provider_id = serializers.IntegerField(read_only=True)
    key = serializers.CharField(source="__str__", read_only=True, help_text="'provider/code', as deployments use it.")

    class Meta:
        model = Region
        fields = [
            "id",
            "key",
            "provider",
            "provider_id",
            "code",
            "display_name",
            "city",
            "country",
            "country_code",
            "jurisdiction",
            "latitude",
            "longitude",
            "location_source",
        ]


class GpuSkuSerializer(serializers.ModelSerializer):
    class Meta:
        model = GpuSku
        fields = ["id", "name", "memory_gib", "aliases"]


class ClusterSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(source="region.provider.name", read_only=True)
    region = serializers.CharField(source="region.__str__", read_only=True, help_text="'provider/code'.")
    region_id = serializers.IntegerField(read_only=True)

    class Meta:
        model = Cluster
        fields = ["id", "name", "provider", "region", "region_id", "state", "capabilities", "created_at"]


class ClusterCapacitySerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(source="cluster.name", read_only=True)
    cluster_id = serializers.IntegerField(read_only=True)
    provider = serializers.CharField(source="cluster.region.provider.name", read_only=True)
    region = serializers.CharField(source="cluster.region.__str__", read_only=True, help_text="'provider/code'.")
    sku = serializers.CharField(source="sku.name", read_only=True)
    sku_id = serializers.IntegerField(read_only=True)
    free_gpus = serializers.IntegerField(read_only=True, help_text="Allocatable GPUs minus GPUs in use.")

    class Meta:
        model = ClusterCapacity
        fields = [
            "id",
            "cluster",
            "cluster_id",
            "provider",
            "region",
            "sku",
            "sku_id",
            "total_gpus",
            "allocatable_gpus",
            "in_use_gpus",
            "free_gpus",
            "hourly_price_per_gpu",
            "pricing_model",
            "updated_at",
        ]


# Filtersets: each foreign key filters by ``x_id`` and by ``x`` (its name), and ``q`` searches text.


def filter_region_key(queryset, prefix: str, value: str):
    """Filter by a region given as its code (``us-east-1``) or its key (``aws/us-east-1``)."""
    provider, _, code = value.rpartition("/")
    condition = Q(**{f"{prefix}code": code})
    if provider:
        condition &= Q(**{f"{prefix}provider__name": provider})
    return queryset.filter(condition)


class ProviderFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="search", label="Search name and display name")

    class Meta:
        model = Provider
        fields = ["name"]

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(display_name__icontains=value))


class RegionFilter(django_filters.FilterSet):
    provider_id = django_filters.NumberFilter()
    provider = django_filters.CharFilter(field_name="provider__name")
    q = django_filters.CharFilter(method="search", label="Search code, name, city and country")

    class Meta:
        model = Region
        fields = ["code", "country_code", "jurisdiction", "location_source"]

    def search(self, queryset, name, value):
        return queryset.filter(
            Q(code__icontains=value)
            | Q(display_name__icontains=value)
            | Q(city__icontains=value)
            | Q(country__icontains=value)
        )


class GpuSkuFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(field_name="name", lookup_expr="icontains", label="Search SKU name")

    class Meta:
        model = GpuSku
        fields = ["name"]


class ClusterFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=ClusterState.choices)
    region_id = django_filters.NumberFilter()
    region = django_filters.CharFilter(method="filter_region", label="Region code or 'provider/code'")
    provider_id = django_filters.NumberFilter(field_name="region__provider_id")
    provider = django_filters.CharFilter(field_name="region__provider__name")
    q = django_filters.CharFilter(method="search", label="Search cluster name and region code")

    class Meta:
        model = Cluster
        fields = ["name"]

    def filter_region(self, queryset, name, value):
        return filter_region_key(queryset, "region__", value)

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(region__code__icontains=value))


class ClusterCapacityFilter(django_filters.FilterSet):
    cluster_id = django_filters.NumberFilter()
    cluster = django_filters.CharFilter(field_name="cluster__name")
    sku_id = django_filters.NumberFilter()
    sku = django_filters.CharFilter(field_name="sku__name")
    region_id = django_filters.NumberFilter(field_name="cluster__region_id")
    region = django_filters.CharFilter(method="filter_region", label="Region code or 'provider/code'")
    provider_id = django_filters.NumberFilter(field_name="cluster__region__provider_id")
    provider = django_filters.CharFilter(field_name="cluster__region__provider__name")
    pricing_model = django_filters.ChoiceFilter(choices=PricingModel.choices)
    q = django_filters.CharFilter(method="search", label="Search cluster and SKU name")

    class Meta:
        model = ClusterCapacity
        fields: list[str] = []

    def filter_region(self, queryset, name, value):
        return filter_region_key(queryset, "cluster__region__", value)

    def search(self, queryset, name, value):
        return queryset.filter(Q(cluster__name__icontains=value) | Q(sku__name__icontains=value))


# Viewsets.


class ProviderViewSet(ReadOnlyViewSet):
    queryset = Provider.objects.all()
    serializer_class = ProviderSerializer
    filterset_class = ProviderFilter
    ordering_fields = ["name"]


class RegionViewSet(ReadOnlyViewSet):
    queryset = Region.objects.select_related("provider")
    serializer_class = RegionSerializer
    filterset_class = RegionFilter
    ordering_fields = ["code", "country_code", "jurisdiction"]


class GpuSkuViewSet(ReadOnlyViewSet):
    queryset = GpuSku.objects.all()
    serializer_class = GpuSkuSerializer
    filterset_class = GpuSkuFilter
    ordering_fields = ["name", "memory_gib"]


class ClusterViewSet(ReadOnlyViewSet):
    queryset = Cluster.objects.select_related("region__provider")
    serializer_class = ClusterSerializer
    filterset_class = ClusterFilter
    ordering_fields = ["name", "state", "created_at"]


class ClusterCapacityViewSet(ReadOnlyViewSet):
    queryset = ClusterCapacity.objects.select_related("cluster__region__provider", "sku")
    serializer_class = ClusterCapacitySerializer
    filterset_class = ClusterCapacityFilter
    ordering_fields = ["allocatable_gpus", "hourly_price_per_gpu", "updated_at"]
