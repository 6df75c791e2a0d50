import getpass
import socket

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from compliance.roles import ROLE_NAMES, grant_role, revoke_role, roles_of


class Command(BaseCommand):
    help = (
        "Give a user a staff role (ops, compliance or auditor), or take it away with --revoke. "
        "Granting also makes the user staff, so they can sign in to the admin. The change is audited."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", help="User name of an existing user.")
        parser.add_argument("role", choices=ROLE_NAMES, help="Role to grant or revoke.")
        parser.add_argument("--revoke", action="store_true", help="Remove the role instead of granting it.")
        parser.add_argument(
            "--reason",
            default="",
            help="Reason for the change, stored in the audit trail. Defaults to a note that the command made it.",
        )

    def handle(self, *args, username, role, revoke, reason, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"User {username!r} not found. Create it first, for example with createsuperuser.")
        reason = reason.strip() or f"{'Revoked' if revoke else 'Granted'} with manage.py grant_role."
        change = revoke_role if revoke else grant_role
        # The command runs outside any web session: the actor is the account on the machine that ran it.
        actor = f"{getpass.getuser()}@{socket.gethostname()} (manage.py grant_role)"
        changed = change(user, role, actor=actor, reason=reason)
        verb = "no longer has" if revoke else "now has"
        if not changed:
            verb = "did not have" if revoke else "already had"
        roles = ", ".join(roles_of(user)) or "none"
        self.stdout.write(f"{username} {verb} the {role} role. Roles: {roles}.")
        customers = ", ".join(user.customers.order_by("name").values_list("name", flat=True))
        if customers and user.is_staff:
            self.stderr.write(
                f"Warning: {username} is a member of the customers {customers} and is now staff, so they read "
                "every customer's objects. Revoking the last role takes staff status away again."
            )
