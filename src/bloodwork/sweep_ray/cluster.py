"""Reaching Ray: join a cluster or start a local instance, with the environment Ray reads at import."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from typing import Any

from bloodwork.sweep import SweepError
from bloodwork.sweep_ray.records import NAMESPACE, RAY_MISSING, one_line

_LOCAL_TOKEN = secrets.token_hex(32)  # for the Ray instances this process starts; never written anywhere


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables the user has not set, for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def _probe(address: str) -> None:
    """Fail in seconds on a GCS address nothing listens at (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # ray://, auto, or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise SweepError(f"no Ray cluster answers at {address}: {err.strerror or err}") from err


def start_ray(address: str | None, workers: int) -> Any:
    """Join the cluster at `address`, or (None) start a local Ray instance with `workers` CPUs; returns the
    `ray` module, initialised."""
    local = address is None
    if address is not None:
        _probe(address)
    # A local instance listens on loopback only (Ray's own switch, read when ray is imported: so only
    # where this process has not imported ray before, as in the CLI), reports no usage statistics, and
    # checks a token made by this process (Ray's default would write one to ~/.ray for good; Ray caches
    # the first token a process uses, so every instance this process starts gets the same one).
    extra = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
             "RAY_AUTH_TOKEN": _LOCAL_TOKEN} if local else {}
    with _env(**extra):
        try:
            import ray
        except ImportError as err:
            raise SweepError(RAY_MISSING) from err
        options: dict[str, Any] = {"namespace": NAMESPACE, "logging_level": logging.ERROR,
                                   "log_to_driver": False}
        try:
            if local:
                # Ray runs its workers at nice 15 to keep its own processes responsive; here the workers'
                # runs are the work, and on a shared machine nice 15 made each run about 2x slower
                # (bench/sweep_engines.py). They run at the command's own priority, as the local engine's do.
                ray.init(address="local", num_cpus=workers, include_dashboard=False,
                         _system_config={"worker_niceness": 0}, **options)
            else:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = address or "a local instance"
            raise SweepError(f"cannot start or reach Ray ({where}): {one_line(err)}") from err
    return ray
