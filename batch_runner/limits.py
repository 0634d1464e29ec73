"""Memory, CPU and process limits on the algorithm's processes, on one machine.

What grand-challenge promises its algorithms: memory as the algorithm asks
(``requires_memory_gb``), 200 % CPU, 512 processes and threads. On AWS the compute service
enforces them; on one machine the runner does, with the first of these that works:

1. **cgroup v2**: a child group ``gantry-<id>`` of the runner's own cgroup, with
   ``memory.max`` (and ``memory.swap.max`` 0), ``pids.max`` and ``cpu.max``. Needs the
   ``memory``/``pids``/``cpu`` controllers enabled in the parent's ``cgroup.subtree_control``
   and write access to it (root, or a delegated subtree).
2. **cgroup v1** (hybrid hosts): one group per hierarchy, ``memory/…/memory.limit_in_bytes``
   (and ``memory.memsw.limit_in_bytes`` when swap accounting exists), ``pids/…/pids.max``,
   ``cpu/…/cpu.cfs_quota_us``.
3. **rlimits**, the last resort: ``RLIMIT_AS`` for memory, ``RLIMIT_NPROC`` for processes (only
   when the algorithm has a uid of its own: the limit counts all of that uid's processes).

No systemd is needed: the runner creates the groups itself as plain directories and the
algorithm's first process joins them between ``fork`` and ``exec`` (so every descendant is
born inside), then drops to the algorithm's uid. Afterwards the runner kills whatever is left
in the groups and removes them. The group's OOM-kill counter tells a memory-limit kill apart
from any other SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class ResourceLimits:
    memory_bytes: int | None = None
    cpus: float | None = 2.0
    pids: int | None = 512


@dataclass
class Confinement:
    """The groups (or rlimits) of one run; ``preexec`` puts the child inside."""

    limits: ResourceLimits
    mechanism: str = "none"
    groups: list[Path] = field(default_factory=list)
    _memory_group: Path | None = None
    _v2: bool = False

    def preexec(self, drop_to: tuple[int, int] | None) -> Callable[[], None]:
        """Runs in the child after fork: join the groups (or set rlimits), then drop uid."""
        groups = [str(g / "cgroup.procs") for g in self.groups]
        limits = self.limits
        use_rlimits = self.mechanism == "rlimit"

        def child() -> None:
            for procs in groups:
                fd = os.open(procs, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            if use_rlimits:
                if limits.memory_bytes:
                    resource.setrlimit(
                        resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)
                    )
                if limits.pids and drop_to is not None:
                    resource.setrlimit(resource.RLIMIT_NPROC, (limits.pids, limits.pids))
            if drop_to is not None:
                os.setgroups([])
                os.setresgid(drop_to[1], drop_to[1], drop_to[1])
                os.setresuid(drop_to[0], drop_to[0], drop_to[0])

        return child

    def oom_killed(self) -> bool:
        """Did the kernel kill a process of this run for exceeding the memory limit?"""
        if self._memory_group is None:
            return False
        name = "memory.events" if self._v2 else "memory.oom_control"
        try:
            text = (self._memory_group / name).read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        if not self._v2:
            # Kernels before 4.13 have no oom_kill counter: hitting the limit is the sign.
            with contextlib.suppress(OSError, ValueError):
                return int((self._memory_group / "memory.failcnt").read_text()) > 0
        return False

    def close(self) -> None:
        """Kill what is left in the groups and remove them."""
        for group in self.groups:
            for _ in range(50):
                pids = _read_pids(group)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
            # Killed processes leave the group when the kernel has finished them: wait.
            deadline = time.monotonic() + 10
            while True:
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    for pid in _read_pids(group):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, signal.SIGKILL)
                    time.sleep(0.05)


def _read_pids(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for v2) → the runner's own cgroup path, from /proc/self/cgroup."""
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _try_v2(limits: ResourceLimits, name: str) -> Confinement | None:
    own = _own_cgroups().get("")
    root = CGROUP_ROOT
    if not (root / "cgroup.controllers").exists():
        root = CGROUP_ROOT / "unified"
        if not (root / "cgroup.controllers").exists():
            return None
    if own is None:
        return None
    parent = root / own.lstrip("/")
    try:
        enabled = (parent / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    wanted = {"memory", "pids"} | ({"cpu"} if limits.cpus else set())
    missing = wanted - set(enabled)
    if missing:
        try:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
        except OSError:
            return None
    group = parent / name
    try:
        group.mkdir()
    except OSError:
        return None
    confinement = Confinement(limits, "cgroup v2", [group], group, True)
    try:
        if limits.memory_bytes:
            _write(group / "memory.max", str(limits.memory_bytes))
            with contextlib.suppress(OSError):
                _write(group / "memory.swap.max", "0")
        if limits.pids:
            _write(group / "pids.max", str(limits.pids))
        if limits.cpus:
            _write(group / "cpu.max", f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
    except OSError:
        confinement.close()
        return None
    return confinement


def _try_v1(limits: ResourceLimits, name: str) -> Confinement | None:
    own = _own_cgroups()
    made: list[Path] = []
    confinement = Confinement(limits, "cgroup v1", made)

    def group_of(controller: str) -> Path | None:
        hierarchy = CGROUP_ROOT / controller
        if not hierarchy.is_dir() or (hierarchy / "cgroup.controllers").exists():
            return None
        key = next((k for k in own if controller in k.split(",")), None)
        parent = hierarchy / (own.get(key, "/") if key else "/").lstrip("/")
        group = parent / name
        group.mkdir()
        made.append(group)
        return group

    try:
        if limits.memory_bytes:
            memory = group_of("memory")
            if memory is None:
                raise OSError("no memory hierarchy")
            _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
            with contextlib.suppress(OSError):
                _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
            confinement._memory_group = memory
        if limits.pids:
            pids = group_of("pids")
            if pids is None:
                raise OSError("no pids hierarchy")
            _write(pids / "pids.max", str(limits.pids))
        if limits.cpus:
            cpu = group_of("cpu")
            if cpu is not None:
                _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(cpu / "cpu.cfs_quota_us", str(int(limits.cpus * CPU_PERIOD_US)))
    except OSError:
        confinement.close()
        return None
    return confinement


def confine(limits: ResourceLimits) -> Confinement:
    """Groups for one run, by the first mechanism that works here (see the module's text)."""
    if limits.memory_bytes is None and limits.pids is None and limits.cpus is None:
        return Confinement(limits)
    name = f"gantry-{uuid.uuid4().hex[:12]}"
    for attempt in (_try_v2, _try_v1):
        found = attempt(limits, name)
        if found is not None:
            return found
    return Confinement(limits, "rlimit")
