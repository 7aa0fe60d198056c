"""Deliberately empty: the verifier copies hidden/ over the workspace copy, so this file replaces any
hidden/conftest.py the agent may have written there (and hidden/pytest.ini stops pytest from looking
for conftest.py files above hidden/)."""
