"""The user-facing REST API for jobs (session or token auth). Thin: parse, call one
service or selector, serialize."""
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from flportal.errors import ValidationFailed
from jobs import selectors, serializers
from jobs.fl.catalog import catalog
from jobs.services import artifacts
from jobs.services.jobs import job_cancel, job_create, job_launch


class JobListApi(APIView):
    def get(self, request):
        jobs = selectors.job_list_for_user(request.user, status=request.query_params.get("status"))
        paginator = LimitOffsetPagination()
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
    def get(self, request, job_id: int):
        rounds = selectors.job_rounds(selectors.job_get_for_user(request.user, job_id))
        return Response(serializers.RoundSerializer(rounds, many=True).data)


class JobMetricsApi(APIView):
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(request.user, job_id)
        q = request.query_params
        points = selectors.job_metrics(job, name=q.get("name"), phase=q.get("phase"), node=q.get("node"))
        return Response(serializers.MetricPointSerializer(points, many=True).data)


class JobEventsApi(APIView):
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(request.user, job_id)
        try:
            after = int(request.query_params.get("after", 0))
        except ValueError:
            after = 0
        return Response(serializers.JobEventSerializer(selectors.job_events(job, after_id=after), many=True).data)


class JobModelsApi(APIView):
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(request.user, job_id)
        return Response(serializers.ModelVersionSerializer(job.model_versions.all(), many=True).data)


class JobModelDownloadApi(APIView):
    def get(self, request, job_id: int, round_number: int):
        job = selectors.job_get_for_user(request.user, job_id)
        version = selectors.job_model_version(job, round_number)
        response = artifacts.file_response(version.path)  # streamed in blocks, also under ASGI
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
