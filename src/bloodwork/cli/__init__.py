"""`bloodwork ...`: the command line, one module per command group, put together in `app.py`.

User mistakes end in one red line and exit code 2, never a traceback; a bug exits 3 with a crash report
(`edge.py`).
"""

from bloodwork.cli.app import app, main

__all__ = ["app", "main"]
