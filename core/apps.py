from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The kernel under the apps: errors, written-out SQL, broadcasts, the channel
    layer, the body limit and node API handler, tokens and token authentication."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"
