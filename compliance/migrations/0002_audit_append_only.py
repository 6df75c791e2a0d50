"""Make the audit trail append-only: PROTECT the actor, and on PostgreSQL reject UPDATE and DELETE by trigger."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

CREATE_TRIGGER = """
CREATE OR REPLACE FUNCTION compliance_auditevent_reject_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'compliance_auditevent is append-only: ' || TG_OP || ' is not allowed',
        ERRCODE = 'insufficient_privilege',
              HINT = 'Record a new audit event instead of changing or deleting one.';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_auditevent_append_only
    BEFORE UPDATE OR DELETE ON compliance_auditevent
    FOR EACH ROW EXECUTE FUNCTION compliance_auditevent_reject_change();
"""

DROP_TRIGGER = """
DROP TRIGGER IF EXISTS compliance_auditevent_append_only ON compliance_auditevent;
DROP FUNCTION IF EXISTS compliance_auditevent_reject_change();
"""


def create_trigger(apps, schema_editor):
    # SQLite (the embedded demo) has no PL/pgSQL; there the model methods are the only guard.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_TRIGGER)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_TRIGGER)


class Migration(migrations.Migration):

    dependencies = [
        ("compliance", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="auditevent",
            options={"base_manager_name": "objects", "ordering": ["-created_at", "-id"]},
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="actor",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(create_trigger, drop_trigger),
    ]
