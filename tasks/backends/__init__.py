"""Model backends behind one Protocol (see tasks.backends.base)."""
from tasks.backends.base import Backend, BatchRequest, BatchResult, make_request, result_error, result_ok

__all__ = ["Backend", "BatchRequest", "BatchResult", "make_request", "result_error", "result_ok"]
