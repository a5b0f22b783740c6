"""Domain errors of the FL server. Each maps to one HTTP status in flportal.errors."""
from flportal.errors import Conflict, DomainError, Forbidden, ValidationFailed


class JobStateError(Conflict):
    code = "illegal_transition"


class RoundStateError(Conflict):
    code = "illegal_transition"


class StaleRound(Conflict):
    code = "stale_round"


class NotSelected(Forbidden):
    code = "not_selected"


class InvalidUpdateError(ValidationFailed):
    code = "invalid_update"


class UpdateTooLarge(DomainError):
    code = "too_large"
    status = 413
