"""Deliberately empty: the verifier mounts hidden/ read-only over hidden/ in its copy of the workspace, so
this file stands where a hidden/conftest.py of the agent's would (and hidden/pytest.ini stops pytest from
looking for conftest.py files above hidden/)."""
