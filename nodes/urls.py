from django.urls import path

from nodes import apis, fl_api, views

urlpatterns = [
    path("nodes/", views.node_list, name="node-list"),
    path("api/v1/nodes/", apis.NodeListApi.as_view()),
    path("api/v1/nodes/<slug:name>/enrollment-code/", apis.NodeEnrollmentCodeApi.as_view()),
    path("api/v1/fl/enroll", fl_api.enroll),
    path("api/v1/fl/heartbeat", fl_api.heartbeat),
]
