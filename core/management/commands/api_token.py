from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from core.auth import api_token_create


class Command(BaseCommand):
    help = "Issue an API token for a user (printed once; only its hash is stored)."
    requires_system_checks = []  # fast: the demo and tests call these often

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="default")
        parser.add_argument("--create", action="store_true", help="create the user if it does not exist")
        parser.add_argument("--password", help="with --create: set this password (else the user cannot log in)")
        parser.add_argument("--group", action="append", default=[],
                            help="add the user to this group (repeatable): the nodes it may use are the groups'")

    def handle(self, *args, username, name, create, password, group, **options):
        users = get_user_model().objects
        user = users.filter(username=username).first()
        if user is None and not create:
            raise CommandError(f"no user {username!r} (use --create)")
        if user is None:
            user = users.create_user(username=username, password=password)
        elif password:
            user.set_password(password)
            user.save(update_fields=["password"])
        user.groups.add(*(Group.objects.get_or_create(name=g)[0] for g in group))
        self.stdout.write(api_token_create(user=user, name=name))
