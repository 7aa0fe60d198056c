"""A fork's candidates as pool rows: what `dataset build` takes from `fork.json` besides its pairs.

- a student sample that recovered (or, at a state with no open trap streak, progressed) is a failure-recovery
  (or golden) row, provided its raw text is a strictly valid frame, as for rows mined from runs;
- a student sample that trapped or thrashed is a rejected row;
- a teacher's answer is a row only if the fork kept it (it verifiably recovered or progressed), with
  `provenance: teacher:<spec>`; a teacher answer that was not kept is no row at all.

Candidates whose branch saw another context at the fork tick, or whose label is contradictory, are no rows.
Every row keeps the fork's exact prompt (the recorded one), so it is the same state as the run's tick.
"""

from __future__ import annotations

import re
from pathlib import Path

from bloodwork.data.fork import Candidate, ForkRecord
from bloodwork.data.formats import Pool
from bloodwork.data.mine import Example

_TRAP = re.compile(r"trap ([A-Z_]+)")


def _pool(c: Candidate) -> tuple[Pool | None, str]:
    if c.source == "teacher":
        if not c.kept:
            return None, "teacher answer not kept"
    elif not c.context_equivalent or c.contradictory:
        return None, "fork candidate with another context or a contradictory label"
    if c.polarity == "positive":
        if not c.strict_ok or c.error is not None:
            return None, "fork positive not strictly valid"
        return ("recovery" if c.label == "recovered" else "golden"), ""
    if c.polarity == "negative" and c.source == "student":
        if c.error is not None or not c.text.strip():
            return None, "rejected without raw text"
        return "rejected", ""
    return None, ""


def fork_examples(fork: ForkRecord, skipped: dict[str, int], source: str = "") -> list[Example]:
    """The fork's usable candidates as Examples (`source`: the input they were found under, default the fork's
    folder); reasons for the others are counted in `skipped`."""
    out: list[Example] = []
    temperature = float(fork.sampling.get("temperature", 0.0))
    source = source or str(Path(fork.base_dir).parent.parent)
    for c in fork.candidates:
        pool, reason = _pool(c)
        if pool is None:
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
            continue
        teacher = c.source == "teacher"
        traps = list(dict.fromkeys(_TRAP.findall(" ".join(c.evidence)))) if pool == "rejected" else []
        out.append(Example(pool=pool, run_id=fork.run_id, group=fork.group, task=fork.task, tick=fork.tick,
                           provenance=c.provenance or fork.provenance,
                           model=(fork.teacher or "") if teacher else fork.model, source=source, prompt=fork.prompt,
                           completion=c.text, op=c.op, traps=traps,
                           detail=f"fork {fork.fork_id} candidate {c.index}: {c.label}",
                           temperature=0.0 if teacher else temperature, kind="teacher" if teacher else "fork",
                           variant=f"{fork.fork_id}/k{c.index}"))
    return out
