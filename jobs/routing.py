from django.urls import path

from jobs import consumers

websocket_urlpatterns = [
    path("ws/jobs/<id:job_id>/", consumers.JobConsumer.as_asgi()),
    path("ws/jobs/", consumers.UserJobsConsumer.as_asgi()),
]
