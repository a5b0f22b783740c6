from django import forms
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from core.errors import ValidationFailed
from nodes.models import Node
from nodes.selectors import enrollment_code_pending
from nodes.services import clean_node_fields, enrollment_code_issue, enrollment_command, node_create, node_set_enabled


class NodeAddForm(forms.ModelForm):
    """A new node: its name and where the portal calls its agent. Its credentials come
    from the one-time enrollment code shown once it is created."""

    agent_url = forms.CharField(max_length=300, help_text="where the portal calls this node's agent, "
                                                          "e.g. http://10.0.0.5:8101")

    class Meta:
        model = Node
        fields = ["name", "agent_url", "user_groups"]

    def clean(self):
        data = super().clean()
        if "name" in data and "agent_url" in data:
            try:
                data["agent_url"] = clean_node_fields(name=data["name"], agent_url=data["agent_url"])
            except ValidationFailed as exc:
                self.add_error(exc.field, exc.message.partition(": ")[2] or exc.message)
        return data


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "enabled", "last_heartbeat_at", "version", "agent_url"]
    list_filter = ["status", "enabled"]
    search_fields = ["name"]
    readonly_fields = ["token_key_id", "token_hash", "status", "last_heartbeat_at", "version", "datasets",
                       "resources", "created_at", "enabled", "history"]
    HISTORY = 20
    actions = ["enable", "disable", "issue_enrollment_code"]
    filter_horizontal = ["user_groups"]
    add_form = NodeAddForm

    @admin.display(description="history (latest first)")
    def history(self, obj):
        """The node's last status changes, read-only."""
        rows = [(e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.status, e.message)
                for e in obj.events.all()[:self.HISTORY]]
        if not rows:
            return "no status change yet"
        return format_html_join(mark_safe("<br>"), "{} {}: {}", rows)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ["name", "agent_url", "user_groups"] if obj is None else super().get_fields(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        node, code = node_create(name=obj.name, agent_url=obj.agent_url, created_by=request.user)
        vars(obj).update(vars(node))  # the admin goes on (log, redirect) with `obj`: make it the node created
        self._show_code(request, node=node, code=code)

    @admin.action(description="Issue a new enrollment code")
    def issue_enrollment_code(self, request, queryset):
        for node in queryset:
            self._show_code(request, node=node, code=enrollment_code_issue(node=node, created_by=request.user))

    @admin.action(description="Enable selected nodes")
    def enable(self, request, queryset):
        for node in queryset:
            node_set_enabled(node=node, enabled=True, actor=request.user)

    @admin.action(description="Disable selected nodes")
    def disable(self, request, queryset):
        for node in queryset:
            node_set_enabled(node=node, enabled=False, actor=request.user)

    def _show_code(self, request, *, node: Node, code: str) -> None:
        """The one-time code, its expiry and the command to run at the site: shown this
        once, never stored (only its hash is)."""
        expires_at = timezone.localtime(enrollment_code_pending(node=node).expires_at)
        messages.success(request, format_html(
            "Enrollment code for node {} (shown only now; single use; expires {}): <code>{}</code>. "
            "At the site, run: <code>{}</code>",
            node.name, f"{expires_at:%Y-%m-%d %H:%M %Z}", code,
            enrollment_command(portal_url=request.build_absolute_uri("/"), code=code)))
