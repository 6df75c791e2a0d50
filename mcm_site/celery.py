import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcm_site.settings")

app = Celery("mcm_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
