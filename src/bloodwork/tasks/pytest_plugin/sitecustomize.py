"""Imported by `site` at the startup of every Python a verifier command starts (this folder is the only
PYTHONPATH entry there); does nothing on Python 3.11 and later.

Python < 3.11 ignores PYTHONSAFEPATH: `python -m pytest` puts the working directory (the agent's copy)
first on sys.path, so a workspace `pytest.py`, `_pytest/` or `pluggy.py` would run instead of pytest. This
module runs before that entry is added. From here until the verifier's plugin (`bloodwork_cwd_first`) is
loaded, a finder placed ahead of the normal one resolves top-level imports without the working directory,
and refuses a module only the working directory has, which is what PYTHONSAFEPATH does. The plugin then
lets go of it (`release_safe_path`) and puts the working directory first, as on 3.11+.
"""

import os
import sys

if sys.version_info < (3, 11) and os.environ.get("PYTHONSAFEPATH"):
    import importlib.machinery

    _CWD = os.getcwd()

    class _SafePathFinder:
        active = True

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if not cls.active or path is not None:  # a submodule: found through its package, never the cwd
                return None
            outside = [p for p in sys.path if os.path.abspath(p or os.curdir) != _CWD]
            spec = importlib.machinery.PathFinder.find_spec(name, outside, target)
            if spec is None and importlib.machinery.PathFinder.find_spec(name, sys.path, target) is not None:
                raise ModuleNotFoundError(f"No module named {name!r} (the working directory is not searched "
                                          "before pytest is loaded)", name=name)
            return spec

    def release_safe_path():
        _SafePathFinder.active = False

    _at = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder), len(sys.meta_path))
    sys.meta_path.insert(_at, _SafePathFinder)
