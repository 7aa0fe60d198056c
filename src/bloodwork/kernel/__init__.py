"""The kernel: the tick loop, its registers, traps, panics and death."""

from bloodwork.kernel.config import KernelConfig, TrapConfig
from bloodwork.kernel.loop import Kernel, KernelCrash, KernelError, RunResult
from bloodwork.kernel.traps import TrapKind

__all__ = ["Kernel", "KernelConfig", "KernelCrash", "KernelError", "RunResult", "TrapConfig", "TrapKind"]
