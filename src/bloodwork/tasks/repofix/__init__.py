"""Repo-fix tasks: reproduce, fix, test and describe a bug in a real project (`repo-fix/<instance>`)."""

from bloodwork.tasks.repofix.env import EnvError, InstanceEnv, ensure_env
from bloodwork.tasks.repofix.importer import ImportedInstance, import_instances
from bloodwork.tasks.repofix.instance import (
    InstanceError,
    RepoFixInstance,
    SdistRef,
    builtin_instance,
    builtin_instances,
    load_instance_file,
    write_instance,
)
from bloodwork.tasks.repofix.sources import SourceError
from bloodwork.tasks.repofix.task import RepoFixTask
from bloodwork.tasks.repofix.validate import InstanceValidation, validate_instances

__all__ = ["EnvError", "ImportedInstance", "InstanceEnv", "InstanceError", "InstanceValidation", "RepoFixInstance",
           "RepoFixTask", "SdistRef", "SourceError", "builtin_instance", "builtin_instances", "ensure_env",
           "import_instances", "load_instance_file", "validate_instances", "write_instance"]
