"""The project's URLs: each app's own, admin, and sign-in."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("jobs.urls")),
    path("", include("nodes.urls")),
]

# JSON `{"error", "message"}` under /api/ (docs/PROTOCOL.md), Django's pages elsewhere
handler400 = "core.errors.bad_request"
handler403 = "core.errors.permission_denied"
handler404 = "core.errors.page_not_found"
handler500 = "core.errors.server_error"
