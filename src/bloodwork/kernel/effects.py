"""Running one op against the world: the manifold, with the chaos plan's injections applied for real."""

from __future__ import annotations

import errno
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bloodwork import prompts
from bloodwork.chaos.plan import FaultPlan
from bloodwork.chronos.records import ChaosData, HaltData
from bloodwork.isa import Op, SysEdit, SysExec, SysHalt, SysRead, SysWrite
from bloodwork.kernel.config import KernelConfig
from bloodwork.kernel.traps import TrapKind
from bloodwork.manifold.runner import CommandRunner
from bloodwork.manifold.workspace import PAGE_CHARS, IOFault, PageFault, PathEscape, Workspace, page_of
from bloodwork.tasks.base import VerifierResult

SPILL_SCHEME = "spill://"
_SPILL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Outcome:
    d: str
    slice_text: str
    traps: list[tuple[TrapKind, str]] = field(default_factory=list)
    changed: bool = False
    chaos: list[ChaosData] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


class World:
    def __init__(self, workspace: Workspace, runner: CommandRunner, spill_dir: Path, plan: FaultPlan,
                 config: KernelConfig) -> None:
        self.ws = workspace
        self.runner = runner
        self.spill_dir = spill_dir
        self.plan = plan
        self.config = config

    def _chaos(self, tick: int, kind: str, target: str, **params: Any) -> ChaosData | None:
        if not self.plan.decide(tick, 0, kind):
            return None
        return ChaosData(kind=kind, tick=tick, target=target, params=params, injected=True)

    def execute(self, op: Op, tick: int, verify: Callable[[], VerifierResult]) -> tuple[Outcome, HaltData | None]:
        """Run one op; a halt is accepted (with the verdict that accepted it) only if `verify` passes."""
        if isinstance(op, SysHalt):
            verdict = verify()
            if verdict.passed:
                return Outcome(d="sys://halt", slice_text=prompts.halt_accepted(verdict.summary),
                               changed=True), HaltData(reason=op.reason, verifier=verdict.model_dump())
            return trap_outcome(TrapKind.ILLEGAL_HALT, prompts.halt_refused(verdict.summary)), None
        if isinstance(op, SysRead):
            return self.read(op, tick), None
        if isinstance(op, SysWrite):
            return self.write(op, tick), None
        if isinstance(op, SysEdit):
            return self.edit(op, tick), None
        return self.exec(op, tick), None

    # -- reading ----------------------------------------------------------------------------------
    def read_slice(self, path: str, page: int) -> tuple[str, int]:
        """The text shown for a file or spill pointer; raises the workspace errors."""
        if path.startswith(SPILL_SCHEME):
            name = path[len(SPILL_SCHEME):]
            target = self.spill_dir / name
            if not _SPILL_NAME.match(name) or not target.is_file():
                raise PageFault(f"{path}: no such spill file")
            text = target.read_text(errors="replace")
        else:
            text = self.ws.read_text(path)
        body, pages = page_of(text, page)
        if page >= pages:
            raise PageFault(f"{path}: page {page} does not exist (pages 0-{pages - 1})")
        return prompts.read_slice(path, page, pages, len(text), body), pages

    def read(self, op: SysRead, tick: int) -> Outcome:
        try:
            text, pages = self.read_slice(op.path, op.page)
        except PathEscape as err:
            return trap_outcome(TrapKind.PATH_ESCAPE, str(err))
        except PageFault as err:
            return trap_outcome(TrapKind.PAGE_FAULT, str(err))
        d = op.path if op.page == 0 else f"{op.path}#page={op.page}"
        return Outcome(d=d, slice_text=text, result={"pages": pages})

    # -- writing ----------------------------------------------------------------------------------
    def _write(self, tick: int, path: str, content: str, verb: str) -> Outcome:
        chaos: list[ChaosData] = []
        fail_after = None
        fail_errno = errno.EACCES
        size = len(content.encode("utf-8"))
        for kind, err in (("write_deny", errno.EACCES), ("disk_full", errno.ENOSPC)):
            event = self._chaos(tick, kind, path, partial_bytes=size // 2, errno=errno.errorcode[err])
            if event:
                chaos.append(event)
                fail_after, fail_errno = size // 2, err
                break
        try:
            changed = self.ws.write_text(path, content, fail_after=fail_after, fail_errno=fail_errno)
        except PathEscape as err:
            return trap_outcome(TrapKind.PATH_ESCAPE, str(err), chaos=chaos)
        except IOFault as err:
            return trap_outcome(TrapKind.IO_FAULT, f"{verb} failed: {err}", chaos=chaos, changed=True)
        return Outcome(d=f"sys://result/{verb}", slice_text=prompts.write_result(verb, path, size, changed),
                       changed=changed, chaos=chaos, result={"bytes": size, "changed": changed})

    def write(self, op: SysWrite, tick: int) -> Outcome:
        return self._write(tick, op.path, op.content, "write")

    def edit(self, op: SysEdit, tick: int) -> Outcome:
        try:
            text = self.ws.read_text(op.path)
        except PathEscape as err:
            return trap_outcome(TrapKind.PATH_ESCAPE, str(err))
        except PageFault as err:
            return trap_outcome(TrapKind.PAGE_FAULT, str(err))
        count = text.count(op.search)
        if count != 1:
            return Outcome(d="sys://result/edit", slice_text=prompts.edit_miss(op.path, count),
                           result={"occurrences": count})
        return self._write(tick, op.path, text.replace(op.search, op.replace, 1), "edit")

    # -- commands ---------------------------------------------------------------------------------
    def exec(self, op: SysExec, tick: int) -> Outcome:
        cfg = self.config
        timeout = min(op.timeout_s or cfg.exec_timeout_s, cfg.exec_timeout_max_s)
        cmd = op.cmd
        chaos: list[ChaosData] = []
        profile = self.plan.profile
        if event := self._chaos(tick, "exec_timeout", op.cmd, hang_s=3600, timeout_s=profile.exec_timeout_s):
            chaos.append(event)
            cmd, timeout = "sleep 3600", min(timeout, profile.exec_timeout_s)
        elif event := self._chaos(tick, "exec_fail", op.cmd, exit_code=1):
            chaos.append(event)
            cmd = "echo 'error: command failed (I/O error)' >&2; exit 1"
        elif event := self._chaos(tick, "log_flood", op.cmd, chars=profile.log_flood_chars):
            chaos.append(event)
            noise = shlex.quote("WARN worker heartbeat missed; retrying connection pool ...")
            cmd = (f"{{ {op.cmd}\n}}; s=$?; yes {noise} | head -c {profile.log_flood_chars}; echo; exit $s")
        res = self.runner.run(cmd, timeout)
        text = res.text
        traps: list[tuple[TrapKind, str]] = []
        result = {"exit": res.exit_code, "timed_out": res.timed_out, "bytes": res.size, "sha256": res.sha256,
                  "duration_s": res.duration_s}
        if res.timed_out:
            traps.append((TrapKind.EXEC_TIMEOUT, f"killed after {timeout:g}s"))
        if any(c.kind == "log_flood" for c in chaos):
            traps.append((TrapKind.LOG_FLOOD, f"the output was buried under {profile.log_flood_chars} chars of noise"))
        elif res.size > cfg.output_ceiling_bytes:
            traps.append((TrapKind.LOG_FLOOD, f"runaway output: {res.size} bytes, over the ceiling of "
                                              f"{cfg.output_ceiling_bytes}"))
        if res.size > cfg.output_cap_chars or len(text) > cfg.output_cap_chars:
            # Long output is a page, not a fault: spilled whole, shown as head + tail + how to read the rest.
            name = f"exec-{tick}.out"
            (self.spill_dir / name).write_bytes(res.output)
            half = cfg.output_cap_chars // 2
            pages = page_of(text, 0)[1]
            kept = None if len(res.output) == res.size else len(res.output)
            note = prompts.paging_note(res.size, res.sha256, f"{SPILL_SCHEME}{name}", pages, PAGE_CHARS, kept)
            text = f"{text[:half]}\n{note}\n{text[-half:]}"
            result["spill"] = name
        if res.fault and not res.timed_out:  # a forged or garbled sandbox reply, or the workspace over its quota
            traps.insert(0, (TrapKind.IO_FAULT, res.fault))
        head = prompts.exec_head(op.cmd, res.exit_code, res.size, timeout if res.timed_out else None,
                                 res.spawn_error)
        head += "".join(prompts.trap_slice(kind.value, detail) + "\n" for kind, detail in traps)
        return Outcome(d=f"sys://exec/{tick}", slice_text=head + text, traps=traps, chaos=chaos, result=result)


def trap_outcome(kind: TrapKind, detail: str, *, chaos: list[ChaosData] | None = None,
                 changed: bool = False) -> Outcome:
    return Outcome(d=f"sys://trap/{kind.value}", slice_text=prompts.trap_slice(kind.value, detail),
                   traps=[(kind, detail)], chaos=chaos or [], changed=changed)

