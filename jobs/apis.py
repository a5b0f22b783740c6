"""The user-facing REST API for jobs (session or token auth). Thin: parse, call one
service or selector, serialize."""
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import ValidationFailed
from core.parsing import query_choice, query_int
from core.responses import ArtifactResponse
from fl.catalog import catalog
from jobs import selectors, serializers
from jobs.models import Job, MetricPoint
from jobs.services import artifacts
from jobs.services.jobs import job_cancel, job_create, job_launch


class Page(LimitOffsetPagination):
    """`?limit=&offset=` → {"count", "next", "previous", "results"}; `limit` defaults to
    PAGE_SIZE (50) and is capped at `max_limit`, so no answer grows with the data. A
    limit or offset that is not a plain integer (limit ≥ 1, offset ≥ 0) is a 400."""

    max_limit = 200

    def get_limit(self, request):
        return query_int(request, self.limit_query_param, default=self.default_limit, low=1, high=self.max_limit)

    def get_offset(self, request):
        return query_int(request, self.offset_query_param, default=0, low=0)


class RoundPage(Page):
    max_limit = 100  # a round carries its updates: about 2.3 KiB of JSON with 10 nodes


class MetricPage(Page):
    max_limit = 1000  # a point is small: about 130 bytes of JSON


class JobListApi(APIView):
    def get(self, request):
        jobs = selectors.job_list_for_user(request.user, status=query_choice(request, "status", Job.Status.values))
        paginator = Page()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(serializers.JobSerializer(page, many=True).data)

    def post(self, request):
        data = serializers.JobCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = job_create(owner=request.user, name=data.validated_data["name"],
                         description=data.validated_data["description"], node_names=data.validated_data["nodes"],
                         spec=data.validated_data["spec"])
        if data.validated_data["start"]:
            job = job_launch(job=job, actor=request.user)
        return Response(serializers.JobSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(request.user, job_id)
        return Response(serializers.JobSerializer(job).data)


class JobStartApi(APIView):
    def post(self, request, job_id: int):
        job = job_launch(job=selectors.job_get_for_user(request.user, job_id), actor=request.user)
        return Response(serializers.JobSerializer(job).data)


class JobCancelApi(APIView):
    def post(self, request, job_id: int):
        if not isinstance(request.data, dict):
            raise ValidationFailed("body: must be a JSON object, e.g. {\"reason\": \"...\"}")
        job = job_cancel(job=selectors.job_get_for_user(request.user, job_id), actor=request.user,
                         reason=str(request.data.get("reason", ""))[:500])
        return Response(serializers.JobSerializer(job).data)


class JobRoundsApi(APIView):
    """A page of the job's rounds in order (by number, then as opened), each with its
    updates and aggregate metrics."""

    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(request.user, job_id)
        paginator = RoundPage()
        page = paginator.paginate_queryset(selectors.job_rounds(job), request, view=self)
        rounds = selectors.rounds_with_metrics(job, page)
        return paginator.get_paginated_response(serializers.RoundSerializer(rounds, many=True).data)


class JobMetricsApi(APIView):
    """A page of the job's metric points in order (round, then recording), filtered by
    `name`, `phase` and `node` (a node's name, or "aggregate")."""

    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(request.user, job_id)
        q = request.query_params
        points = selectors.job_metrics(job, name=q.get("name"), phase=query_choice(request, "phase",
                                                                                    MetricPoint.Phase.values),
                                       node=q.get("node"))
        paginator = MetricPage()
        page = paginator.paginate_queryset(points, request, view=self)
        return paginator.get_paginated_response(serializers.MetricPointSerializer(page, many=True).data)


class JobEventsApi(APIView):
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(request.user, job_id)
        after = query_int(request, "after", default=0, low=0)
        return Response(serializers.JobEventSerializer(selectors.job_events(job, after_id=after), many=True).data)


class JobModelsApi(APIView):
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(request.user, job_id)
        return Response(serializers.ModelVersionSerializer(job.model_versions.all(), many=True).data)


class JobModelDownloadApi(APIView):
    def get(self, request, job_id: int, round_number: int):
        job = selectors.job_get_for_user(request.user, job_id)
        version = selectors.job_model_version(job, round_number)
        response = ArtifactResponse(artifacts.open_artifact(version.path))  # streamed in blocks, also under ASGI
        response["Content-Disposition"] = f'attachment; filename="job{job.pk}-round{version.round}.safetensors"'
        response["X-Checksum-Sha256"] = version.sha256
        return response


class JobCrossSiteApi(APIView):
    def get(self, request, job_id: int):
        return Response(selectors.job_cross_site_matrix(selectors.job_get_for_user(request.user, job_id)))


class CatalogApi(APIView):
    """Every model, strategy and optimizer with its parameter schema: the one source the
    UI form and API clients are generated from, and job creation validates against."""

    def get(self, request):
        return Response(catalog())
