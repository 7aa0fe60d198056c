"""`bloodwork sweep --engine ray`: the local engine's grid, spread over a Ray cluster.

Each run is a Ray task that declares what it needs (one CPU and some memory); Ray decides where it runs.
Local models live in one `ModelHost` actor per node, which loads each model once and answers every run on
its node; API, scripted and replay specs need no actor. No shared filesystem is assumed: a run writes
its directory in its node's scratch space and returns it as a tarball; the driver verifies the journal
and places the directory at `OUT/runs/<cell_id>/`, exactly where and as the local engine would. With
`shared_out`, runs write there directly (the path must be the same on every node).

Faults: a run whose worker or node dies is retried, at most `retries` times. Where its directory is
reachable (its node is still alive, the driver holds an interrupted copy, or the output is shared) the
retry resumes from the last committed tick with the kernel's resume; otherwise it starts again, and the
journal prefix the driver mirrored while the run went on is kept under `OUT/interrupted/<cell_id>.a<N>/`
with status `interrupted`. Every attempt is two lines of `OUT/ray_attempts.jsonl` (start, end).

`ray` is imported only inside functions of this package, and only when this engine runs.

Modules: `records` (settings, names, what crosses the wire, the attempts log), `cluster` (joining or starting
Ray), `node` (the actors and the task that runs one attempt on a node), `driver` (`RaySweep`).
"""

from bloodwork.sweep_ray.driver import RaySweep
from bloodwork.sweep_ray.records import ATTEMPTS_FILE, AttemptRecord, Progress, RayCellResult, pack, unpack

__all__ = ["ATTEMPTS_FILE", "AttemptRecord", "Progress", "RayCellResult", "RaySweep", "pack", "unpack"]
