from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"

    def ready(self):
        from fleet import checks  # noqa: F401  registers the deploy checks
