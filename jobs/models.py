"""The FL domain. Statuses change only in jobs/services (see docs/STATES.md)."""
from django.conf import settings
from django.db import models

from nodes.models import Node


class Job(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    model = models.CharField(max_length=100)
    model_params = models.JSONField(default=dict)
    strategy = models.CharField(max_length=100, default="fedavg")
    strategy_params = models.JSONField(default=dict)
    optimizer = models.CharField(max_length=100, default="sgd")
    optimizer_params = models.JSONField(default=dict)
    dataset = models.CharField(max_length=100)
    val_fraction = models.FloatField(default=0.2)
    local_epochs = models.PositiveIntegerField(default=1)
    batch_size = models.PositiveIntegerField(default=32)
    rounds = models.PositiveIntegerField(default=5)
    min_clients = models.PositiveIntegerField(default=1)
    clients_per_round = models.PositiveIntegerField(null=True, blank=True)  # null = every node
    clients_required = models.PositiveIntegerField(default=1)
    round_timeout_s = models.FloatField(default=300)
    buffer_size = models.IntegerField(default=-1)  # -1 = wait for every selected node
    evaluate_every = models.PositiveIntegerField(default=1)
    # opt-in: it sends each site's last local model to the other sites
    cross_site_validation = models.BooleanField(default=False)
    seed = models.IntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, db_index=True)
    status_reason = models.TextField(blank=True)
    current_round = models.PositiveIntegerField(default=0)
    final_model = models.ForeignKey("ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    cloned_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="clones")
    nodes = models.ManyToManyField(Node, through="JobNode", related_name="jobs")
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self):
        return f"{self.name} (#{self.pk})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class JobNode(models.Model):
    """A node's participation in a job."""

    class Status(models.TextChoices):
        SELECTED = "selected"
        RUNNING = "running"
        FINISHED = "finished"  # the job succeeded, with this node's result in its last round
        DROPPED = "dropped"  # the job succeeded, but this node had stopped answering (status_reason: since when)
        STOPPED = "stopped"  # the job failed or was cancelled while this node took part
        FAILED = "failed"  # this node could not take part (its agent refused or was unreachable)

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="job_nodes")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="job_nodes")
    dataset = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SELECTED)
    status_reason = models.TextField(blank=True)
    agent_run_id = models.CharField(max_length=64, blank=True)
    run_started_at = models.DateTimeField(null=True, blank=True)
    # trainers asked of its agent for this job: the first, then one per trainer found gone
    trainer_starts = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "node"], name="uniq_job_node")]
        ordering = ["node__name"]


class ModelVersion(models.Model):
    """Global weights after round `round` (0 = the initial model)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="model_versions")
    round = models.PositiveIntegerField()
    path = models.CharField(max_length=500)  # relative to ARTIFACT_ROOT
    sha256 = models.CharField(max_length=64)
    bytes = models.BigIntegerField()
    format = models.CharField(max_length=32, default="safetensors")
    # the strategy's server state after producing this version (FedAdam's m and v...),
    # so a restarted worker continues the server optimizer instead of resetting it
    server_state_path = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "round"], name="uniq_model_version")]
        ordering = ["round"]


class Round(models.Model):
    class Kind(models.TextChoices):
        TRAIN = "train"
        EVALUATE = "evaluate"
        CROSS_SITE = "cross_site"

    class Status(models.TextChoices):
        OPEN = "open"
        AGGREGATING = "aggregating"
        CLOSED = "closed"
        FAILED = "failed"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="rounds_set")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TRAIN)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN, db_index=True)
    status_reason = models.TextField(blank=True)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="rounds_using")
    result_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    selected = models.ManyToManyField(Node, related_name="+")
    dropped = models.ManyToManyField(Node, related_name="+", blank=True)
    target_updates = models.PositiveIntegerField()
    # A train round whose nodes first evaluate the model they receive (the result of
    # round number - 1) and send those metrics with their update: the federated
    # evaluation of every round but the last rides on the next round's exchange
    # (docs/PROTOCOL.md).
    evaluate_first = models.BooleanField(default=False)
    deadline = models.DateTimeField()
    opened_at = models.DateTimeField(auto_now_add=True)
    aggregating_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # The aggregation lease (jobs/services/lease.py): which worker aggregates the round
    # and until when, renewed while it runs; another may take the round over only once
    # it has expired.
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "number", "kind"], name="uniq_round")]
        ordering = ["number", "id"]  # train, then evaluate, then cross-site within a number

    @staticmethod
    def phase_of(kind: str) -> str | None:
        """The phase of the metrics a round's results report: fit (train), eval
        (evaluate), none (cross-site: its results are CrossSiteResult rows)."""
        return {Round.Kind.TRAIN: MetricPoint.Phase.FIT, Round.Kind.EVALUATE: MetricPoint.Phase.EVAL}.get(kind)

    @property
    def metric_phase(self) -> str | None:
        return self.phase_of(self.kind)


class Update(models.Model):
    """A node's accepted contribution to a round: weights for a train round, metrics
    only for an evaluate round. Refused uploads leave no row."""

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="updates")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="updates")
    path = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    bytes = models.BigIntegerField(default=0)
    num_examples = models.PositiveIntegerField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["round", "node"], name="uniq_update")]


class MetricPoint(models.Model):
    class Phase(models.TextChoices):
        FIT = "fit"
        EVAL = "eval"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metrics")
    round = models.PositiveIntegerField()
    node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.CASCADE)  # null = aggregate
    phase = models.CharField(max_length=8, choices=Phase.choices)
    name = models.CharField(max_length=64)
    value = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["job", "round"])]
        ordering = ["round", "id"]


class JobEvent(models.Model):
    """Audit trail: every transition and operator action, who, what, why, when."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    message = models.TextField()
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["job", "id"])]


class CrossSiteResult(models.Model):
    """One cell metric of the cross-site validation matrix: the model from `source`
    ("global" or a node's name: its last local model) evaluated by `evaluator` on its
    validation data (NVIDIA FLARE's CrossSiteModelEval)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="cross_site_results")
    evaluator = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="+")
    source = models.CharField(max_length=64)
    name = models.CharField(max_length=64)
    value = models.FloatField()
    num_examples = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "evaluator", "source", "name"], name="uniq_cross_site")]
        ordering = ["source", "evaluator__name", "name"]


class WatchdogClock(models.Model):
    """The watchdog's own memory (one row): when it last swept, and since when it has
    been sweeping without a gap. After a gap (the portal tier was down, so no heartbeat
    could land), nodes get a full offline timeout to be heard from again before they are
    marked offline."""

    last_sweep_at = models.DateTimeField()
    listening_since = models.DateTimeField()
