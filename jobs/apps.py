from django.apps import AppConfig
from django.conf import settings

from fl.params import parse_model_paths  # no torch


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        """User models named in FLPORTAL_MODELS join the model registry (README); a bad
        value stops the process here, at start-up."""
        if settings.FLPORTAL_MODELS:
            from fl.networks import register_from_settings  # imports torch: only when there are user models

            register_from_settings(parse_model_paths(settings.FLPORTAL_MODELS))
