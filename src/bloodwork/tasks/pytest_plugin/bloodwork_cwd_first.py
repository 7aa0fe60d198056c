"""Loaded by bloodwork's verifier (`-p bloodwork_cwd_first`), from a read-only folder of its own.

The verifier starts pytest with PYTHONSAFEPATH=1 and PYTHONPATH naming this folder only, so neither the
working directory nor a task's own PYTHONPATH can replace what pytest imports at startup (a workspace
`pytest.py`, `pluggy/`, or a stdlib name). Once pytest and its built-in plugins are loaded, this puts the
working directory and the task's PYTHONPATH (BLOODWORK_PYTHONPATH) first, as `PYTHONPATH=... python -m
pytest` would have, so the project's own modules import as usual, and gives processes the tests start the
environment they would have had.
"""

import os
import sys

# Python < 3.11: our sitecustomize kept the working directory out of imports until now (see there).
getattr(sys.modules.get("sitecustomize"), "release_safe_path", lambda: None)()
_late = [os.path.abspath(p) for p in os.environ.pop("BLOODWORK_PYTHONPATH", "").split(os.pathsep) if p]
for _entry in reversed([os.getcwd(), *_late]):
    if _entry in sys.path:
        sys.path.remove(_entry)
    sys.path.insert(0, _entry)
os.environ.pop("PYTHONSAFEPATH", None)
if _late:
    os.environ["PYTHONPATH"] = os.pathsep.join(_late)
else:
    os.environ.pop("PYTHONPATH", None)
