from rest_framework import serializers

from jobs.models import Job, JobEvent, MetricPoint, ModelVersion, Round


class StrictBooleanField(serializers.BooleanField):
    """JSON's true and false only (DRF's BooleanField also takes "yes", "on", 1...)."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)


class JobCreateSerializer(serializers.Serializer):
    """Shape only; every value is validated by jobs.services (against the catalog). A key
    it does not know (`owner`, `status`, `id`...) is refused, not ignored."""

    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
    nodes = serializers.ListField(child=serializers.CharField(max_length=64), allow_empty=False, max_length=1000)
    spec = serializers.DictField(required=False, default=dict)
    start = StrictBooleanField(required=False, default=False)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields), key=str)
            if unknown:
                known = ", ".join(self.fields)
                raise serializers.ValidationError({str(unknown[0]): [f"unknown field (known: {known})"]})
        return super().to_internal_value(data)


class ModelVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["round", "sha256", "bytes", "format", "created_at"]


class JobSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")
    final_model = ModelVersionSerializer(allow_null=True)
    spec = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = ["id", "name", "description", "owner", "status", "status_reason", "current_round", "spec",
                  "final_model", "created_at", "queued_at", "started_at", "finished_at", "cloned_from"]

    def get_spec(self, job):
        names = ["model", "model_params", "strategy", "strategy_params", "optimizer", "optimizer_params",
                 "dataset", "val_fraction", "local_epochs", "batch_size", "rounds", "min_clients",
                 "clients_per_round", "clients_required", "round_timeout_s", "buffer_size", "evaluate_every", "seed",
                 "cross_site_validation"]
        return {name: getattr(job, name) for name in names}


class RoundSerializer(serializers.ModelSerializer):
    selected = serializers.SerializerMethodField()
    dropped = serializers.SerializerMethodField()
    updates = serializers.SerializerMethodField()
    model_version = serializers.IntegerField(source="model_version.round")
    result_version = ModelVersionSerializer(allow_null=True)
    metrics = serializers.DictField(source="aggregate")
    evaluation = serializers.DictField()

    class Meta:
        model = Round
        fields = ["id", "number", "kind", "status", "status_reason", "model_version", "result_version", "selected",
                  "dropped", "target_updates", "evaluate_first", "deadline", "opened_at", "aggregating_at",
                  "closed_at", "updates", "metrics", "evaluation"]

    def get_selected(self, rnd):
        return sorted(n.name for n in rnd.selected.all())

    def get_dropped(self, rnd):
        return sorted(n.name for n in rnd.dropped.all())

    def get_updates(self, rnd):
        return [{"node": u.node.name, "num_examples": u.num_examples, "sha256": u.sha256, "bytes": u.bytes,
                 "received_at": u.received_at} for u in rnd.updates.all()]


class MetricPointSerializer(serializers.ModelSerializer):
    node = serializers.CharField(source="node.name", allow_null=True, default=None)

    class Meta:
        model = MetricPoint
        fields = ["round", "phase", "node", "name", "value", "created_at"]


class JobEventSerializer(serializers.ModelSerializer):
    node = serializers.CharField(source="node.name", allow_null=True, default=None)
    actor = serializers.CharField(source="actor.username", allow_null=True, default=None)

    class Meta:
        model = JobEvent
        fields = ["id", "kind", "message", "node", "actor", "data", "created_at"]
