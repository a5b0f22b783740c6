from django.apps import AppConfig
from django.urls import register_converter

from core.converters import DatabaseIdConverter


class CoreConfig(AppConfig):
    """The kernel under the apps: errors, written-out SQL, broadcasts, the channel
    layer, the body limit and node API handler, tokens and token authentication, the
    URLs' `<id:...>` converter."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        register_converter(DatabaseIdConverter, "id")
