"""Domain errors of the nodes app. Each maps to one HTTP status in core.errors."""
from core.errors import Conflict, DomainError, Forbidden, InvalidNodeRequest, ValidationFailed


class InvalidReport(InvalidNodeRequest):
    """A heartbeat's dataset or runs report that cannot be taken."""


class NodeDisabled(Forbidden):
    code = "node_disabled"

    def __init__(self, node_name: str):
        super().__init__(f"node {node_name} is disabled by the portal's administrators")


class EnrollmentInvalid(ValidationFailed):
    code = "enrollment_invalid"


class EnrollmentUsed(Conflict):
    code = "enrollment_used"


class EnrollmentExpired(DomainError):
    code = "enrollment_expired"
    status = 410
