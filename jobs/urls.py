from django.urls import path

from jobs import apis, fl_api, views

# <id:...>: a database id, 1 to 18 digits (core/converters.py); a longer number is a 404.
urlpatterns = [
    path("", views.job_list, name="job-list"),
    path("jobs/<id:job_id>/", views.job_detail, name="job-detail"),
    # the REST API (users, automation)
    path("api/v1/jobs/", apis.JobListApi.as_view()),
    path("api/v1/jobs/<id:job_id>/", apis.JobDetailApi.as_view()),
    path("api/v1/jobs/<id:job_id>/start/", apis.JobStartApi.as_view()),
    path("api/v1/jobs/<id:job_id>/cancel/", apis.JobCancelApi.as_view()),
    path("api/v1/jobs/<id:job_id>/rounds/", apis.JobRoundsApi.as_view()),
    path("api/v1/jobs/<id:job_id>/metrics/", apis.JobMetricsApi.as_view()),
    path("api/v1/jobs/<id:job_id>/events/", apis.JobEventsApi.as_view()),
    path("api/v1/jobs/<id:job_id>/models/", apis.JobModelsApi.as_view()),
    path("api/v1/jobs/<id:job_id>/models/<id:round_number>/download/", apis.JobModelDownloadApi.as_view()),
    path("api/v1/jobs/<id:job_id>/cross-site/", apis.JobCrossSiteApi.as_view()),
    path("api/v1/catalog/", apis.CatalogApi.as_view()),
    # the node-facing FL API (docs/PROTOCOL.md): trainers
    path("api/v1/fl/jobs/<id:job_id>/task", fl_api.task),
    path("api/v1/fl/jobs/<id:job_id>/models/<id:version>", fl_api.model_download),
    path("api/v1/fl/jobs/<id:job_id>/logs", fl_api.logs),
    path("api/v1/fl/rounds/<id:round_id>/update", fl_api.update_upload),
    path("api/v1/fl/rounds/<id:round_id>/evaluation", fl_api.evaluation),
    path("api/v1/fl/rounds/<id:round_id>/cross-site", fl_api.cross_site),
    path("api/v1/fl/rounds/<id:round_id>/models/<slug:source>", fl_api.cross_site_model_download),
]
