"""Domain errors of the FL server. Each maps to one HTTP status in core.errors."""
from core.errors import Conflict, DomainError, Forbidden, InvalidNodeRequest, TooLarge


class JobStateError(Conflict):
    code = "illegal_transition"


class RoundStateError(Conflict):
    code = "illegal_transition"


class StaleRound(Conflict):
    code = "stale_round"


class NotSelected(Forbidden):
    code = "not_selected"


class InvalidUpdateError(InvalidNodeRequest):
    """An update, evaluation or cross-site result that cannot be accepted."""


class UpdateTooLarge(TooLarge):
    pass


class LogQuotaExceeded(TooLarge):
    code = "log_quota"


class StorageUnavailable(DomainError):
    """The portal could not store what a node sent (its artifact storage failed): the
    node's fault it is not, and it may send it again (503)."""

    code = "storage_unavailable"
    status = 503
