from django.contrib import admin

from jobs.models import Job, JobEvent


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(ReadOnly):
    list_display = ["id", "name", "owner", "status", "current_round", "rounds", "created_at"]
    list_filter = ["status"]


@admin.register(JobEvent)
class JobEventAdmin(ReadOnly):
    list_display = ["job", "kind", "message", "actor", "node", "created_at"]
    list_filter = ["kind"]
