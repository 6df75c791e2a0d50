from django.apps import AppConfig


class PlacementsConfig(AppConfig):
    name = "placements"

    def ready(self) -> None:
        from placements import admin_traffic  # noqa: F401  (registers the traffic sample admin)
