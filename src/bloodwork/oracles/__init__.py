"""Model backends behind one protocol (see `base.Oracle`); `make_oracle(spec)` builds one from a spec."""

from bloodwork.oracles.base import CallInfo, Completion, Message, Oracle, OracleConfigError
from bloodwork.oracles.registry import make_oracle

__all__ = ["CallInfo", "Completion", "Message", "Oracle", "OracleConfigError", "make_oracle"]
