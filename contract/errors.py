class ContractError(ValueError):
    """A topic or payload does not follow the fieldlab contract. The message says where and why."""


class ServiceError(RuntimeError):
    """A failure a person can act on (a port taken, a broker unreachable): shown as one line, no traceback."""
