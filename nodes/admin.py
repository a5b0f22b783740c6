from django.contrib import admin

from nodes.models import Node
from nodes.services import node_set_enabled


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "enabled", "last_heartbeat_at", "version", "agent_url"]
    list_filter = ["status", "enabled"]
    search_fields = ["name"]
    readonly_fields = ["token_key_id", "token_hash", "status", "last_heartbeat_at", "version", "datasets",
                       "resources", "created_at", "enabled"]
    actions = ["enable", "disable"]

    @admin.action(description="Enable selected nodes")
    def enable(self, request, queryset):
        for node in queryset:
            node_set_enabled(node=node, enabled=True)

    @admin.action(description="Disable selected nodes")
    def disable(self, request, queryset):
        for node in queryset:
            node_set_enabled(node=node, enabled=False)

    def has_add_permission(self, request):
        return False  # credentials are issued by `manage.py node_register` (shown once)
