"""Template filters for ages of runs, in units that still show a difference below a minute."""

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def age(moment: datetime | None, now: datetime | None = None) -> str:
    """Return how long ago ``moment`` was, such as "45 s", "12 min", "3 h" or "2 d"; "-" for none."""
    if moment is None:
        return "-"
    seconds = max(0.0, ((now or timezone.now()) - moment).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"
