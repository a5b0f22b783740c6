from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from jobs import apis as job_apis
from jobs import fl_api, views as job_views
from nodes import apis as node_apis

fl_patterns = [
    path("heartbeat", fl_api.heartbeat),
    path("jobs/<int:job_id>/task", fl_api.task),
    path("jobs/<int:job_id>/models/<int:version>", fl_api.model_download),
    path("jobs/<int:job_id>/logs", fl_api.logs),
    path("rounds/<int:round_id>/update", fl_api.update_upload),
    path("rounds/<int:round_id>/evaluation", fl_api.evaluation),
    path("rounds/<int:round_id>/cross-site", fl_api.cross_site),
    path("rounds/<int:round_id>/models/<slug:source>", fl_api.cross_site_model_download),
]

api_patterns = [
    path("fl/", include(fl_patterns)),
    path("jobs/", job_apis.JobListApi.as_view()),
    path("jobs/<int:job_id>/", job_apis.JobDetailApi.as_view()),
    path("jobs/<int:job_id>/start/", job_apis.JobStartApi.as_view()),
    path("jobs/<int:job_id>/cancel/", job_apis.JobCancelApi.as_view()),
    path("jobs/<int:job_id>/rounds/", job_apis.JobRoundsApi.as_view()),
    path("jobs/<int:job_id>/metrics/", job_apis.JobMetricsApi.as_view()),
    path("jobs/<int:job_id>/events/", job_apis.JobEventsApi.as_view()),
    path("jobs/<int:job_id>/models/", job_apis.JobModelsApi.as_view()),
    path("jobs/<int:job_id>/models/<int:round_number>/download/", job_apis.JobModelDownloadApi.as_view()),
    path("jobs/<int:job_id>/cross-site/", job_apis.JobCrossSiteApi.as_view()),
    path("catalog/", job_apis.CatalogApi.as_view()),
    path("nodes/", node_apis.NodeListApi.as_view()),
]

urlpatterns = [
    path("", job_views.job_list, name="job-list"),
    path("jobs/<int:job_id>/", job_views.job_detail, name="job-detail"),
    path("nodes/", job_views.node_list, name="node-list"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_patterns)),
]

handler500 = "flportal.errors.server_error"
