"""The admin's "Routes" page of a deployment: its ranked routes for a city chosen by the operator."""

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from fleet.models import Region
from placements.models import Deployment
from placements.routing import ClientLocation, locate_city, places, routes_for


def city_choices(deployment: Deployment) -> list[tuple[str, str]]:
    """Demand origins of the deployment first, then the cities of MCM's regions, as "latitude,longitude" values."""
    choices = [
        (f"{origin.latitude},{origin.longitude}|{origin.name}", f"{origin.name} (demand origin, {origin.share:.0%})")
        for origin in deployment.demand_origins.all()
    ]
    seen = set()
    for city, country, latitude, longitude in (
        Region.objects.exclude(city="").order_by("city").values_list("city", "country_code", "latitude", "longitude")
    ):
        if (city, country) not in seen:
            seen.add((city, country))
            choices.append((f"{latitude},{longitude}|{city}", f"{city}, {country} (MCM region)"))
    return choices


class CityForm(forms.Form):
    city = forms.ChoiceField(required=False, label="City")
    other = forms.CharField(
        required=False,
        label="Other city",
        help_text="Any city name, looked up in the Natural Earth places file; used instead of the list when given.",
    )

    def __init__(self, *args, deployment: Deployment, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["city"].choices = city_choices(deployment)

    def clean(self):
        cleaned = super().clean()
        other = (cleaned.get("other") or "").strip()
        if other:
            if places() is None:
                raise ValidationError({"other": "No places file under MCM_DATA_DIR: pick a city from the list."})
            location = locate_city(other)
            if location is None:
                raise ValidationError({"other": f"{other!r} is not in the places file."})
            cleaned["location"] = location
            return cleaned
        value = cleaned.get("city")
        if not value:
            raise ValidationError({"city": "Pick a city, or type one under Other city."})
        point, _, name = value.partition("|")
        latitude, longitude = (float(part) for part in point.split(","))
        cleaned["location"] = ClientLocation(latitude, longitude, name, f"city {name}")
        return cleaned


def routes_view(model_admin: admin.ModelAdmin, request, object_id: int):
    deployment = get_object_or_404(model_admin.get_queryset(request), pk=object_id)
    form = CityForm(request.GET or None, deployment=deployment)
    answer = routes_for(deployment.pk, form.cleaned_data["location"]) if form.is_valid() else None
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": f"Routes of {deployment}",
        "deployment": deployment,
        "form": form,
        "answer": answer,
    }
    return TemplateResponse(request, "admin/placements/deployment/routes.html", context)


@admin.display(description="routes")
def routes_link(deployment: Deployment) -> str:
    if deployment.pk is None:
        return "-"
    url = reverse("admin:placements_deployment_routes", args=[deployment.pk])
    return format_html('<a href="{}">Routes for a chosen city</a>', url)
