from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ComplianceConfig(AppConfig):
    name = "compliance"

    def ready(self):
        from compliance.roles import create_roles_after_migrate

        # Sent once for this app after every migrate, and after a test database flush.
        post_migrate.connect(create_roles_after_migrate, sender=self, dispatch_uid="compliance.roles")
