from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        """User models named in FLPORTAL_MODELS join the model registry (README)."""
        from django.conf import settings

        if settings.FLPORTAL_MODELS:
            from jobs.fl.networks import register_from_settings

            register_from_settings(settings.FLPORTAL_MODELS)
