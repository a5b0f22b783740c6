from django.urls import path

from jobs import apis, fl_api, views

urlpatterns = [
    path("", views.job_list, name="job-list"),
    path("jobs/<int:job_id>/", views.job_detail, name="job-detail"),
    # the REST API (users, automation)
    path("api/v1/jobs/", apis.JobListApi.as_view()),
    path("api/v1/jobs/<int:job_id>/", apis.JobDetailApi.as_view()),
    path("api/v1/jobs/<int:job_id>/start/", apis.JobStartApi.as_view()),
    path("api/v1/jobs/<int:job_id>/cancel/", apis.JobCancelApi.as_view()),
    path("api/v1/jobs/<int:job_id>/rounds/", apis.JobRoundsApi.as_view()),
    path("api/v1/jobs/<int:job_id>/metrics/", apis.JobMetricsApi.as_view()),
    path("api/v1/jobs/<int:job_id>/events/", apis.JobEventsApi.as_view()),
    path("api/v1/jobs/<int:job_id>/models/", apis.JobModelsApi.as_view()),
    path("api/v1/jobs/<int:job_id>/models/<int:round_number>/download/", apis.JobModelDownloadApi.as_view()),
    path("api/v1/jobs/<int:job_id>/cross-site/", apis.JobCrossSiteApi.as_view()),
    path("api/v1/catalog/", apis.CatalogApi.as_view()),
    # the node-facing FL API (docs/PROTOCOL.md): trainers
    path("api/v1/fl/jobs/<int:job_id>/task", fl_api.task),
    path("api/v1/fl/jobs/<int:job_id>/models/<int:version>", fl_api.model_download),
    path("api/v1/fl/jobs/<int:job_id>/logs", fl_api.logs),
    path("api/v1/fl/rounds/<int:round_id>/update", fl_api.update_upload),
    path("api/v1/fl/rounds/<int:round_id>/evaluation", fl_api.evaluation),
    path("api/v1/fl/rounds/<int:round_id>/cross-site", fl_api.cross_site),
    path("api/v1/fl/rounds/<int:round_id>/models/<slug:source>", fl_api.cross_site_model_download),
]
