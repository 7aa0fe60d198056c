"""Model backends behind one protocol (see `base.Oracle`); `make_oracle(spec)` builds one from a spec."""

import os

# Two threads spinning while waiting for work make a shared 2-core machine 3-4x slower under load (FACTS).
# The OpenMP runtime reads this once, when torch is first imported; every module of this package that
# imports torch is imported after this line.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bloodwork.oracles.base import CallInfo, Completion, Message, Oracle, OracleConfigError
from bloodwork.oracles.registry import make_oracle

__all__ = ["CallInfo", "Completion", "Message", "Oracle", "OracleConfigError", "make_oracle"]
