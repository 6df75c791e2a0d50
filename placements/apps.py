from django.apps import AppConfig


class PlacementsConfig(AppConfig):
    name = "placements"

    def ready(self) -> None:
        from placements import (
            admin_tokens,  # noqa: F401  (registers the API token admin)
            admin_traffic,  # noqa: F401  (registers the traffic sample admin)
        )
