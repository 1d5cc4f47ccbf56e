"""Runs whose process is gone never block another: who holds a writer slot, whether it is alive, and reaping.

A run the ``m3-recon`` command executes in its own process (``backfill``, ``demo``) is tagged with that
process's identity: pid, host and the process's start time (so a pid reused after a reboot is not
mistaken for the run). Before a run starts, and every few seconds while one waits for a pool slot,
runs still marked as going whose recorded process is dead are marked failed and their concurrency
slots freed; slots still held by runs that have ended are freed too. Runs the daemon launched carry
no such tag: the code server that started them marks them failed when their process dies, and
Dagster's run monitoring (``run_monitoring`` in dagster.yaml) frees their slots.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import dagster as dg

PID_TAG = "m3_recon/pid"
HOST_TAG = "m3_recon/host"
PROCESS_START_TAG = "m3_recon/process_start"
GOING = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
         dg.DagsterRunStatus.CANCELING]
ENDED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def process_start(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (Linux ``/proc``); None where there is no ``/proc``
    or no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[19]  # field 22 of stat(5); fields[0] is field 3


def process_tags() -> dict[str, str]:
    """The identity of this process, as run tags."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), PROCESS_START_TAG: process_start(pid) or ""}


def process_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process a run's tags name is still running: None when it cannot be told (no tags, or the
    process runs on another host)."""
    if PID_TAG not in tags or tags.get(HOST_TAG) != socket.gethostname():
        return None
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    recorded, current = tags.get(PROCESS_START_TAG), process_start(pid)
    return not (recorded and current and recorded != current)


@dataclass(frozen=True)
class SlotHolder:
    """A run holding (or queued with an assigned) slot of a pool."""

    pool: str
    run_id: str
    step_key: str
    job_name: str
    status: str
    alive: bool | None
    where: str

    def describe(self) -> str:
        if self.status in {s.value for s in ENDED}:
            state = f"already {self.status.lower()}"
        elif self.alive is None:
            state = f"{self.status.lower()}, {self.where}"
        else:
            state = f"{self.status.lower()}, {self.where} {'alive' if self.alive else 'DEAD'}"
        return f"run {self.run_id[:8]} ({self.job_name}, step {self.step_key}; {state})"

    @property
    def stale(self) -> bool:
        return self.alive is False or self.status in {s.value for s in ENDED}


def slot_holders(instance: dg.DagsterInstance, exclude_run: str | None = None) -> list[SlotHolder]:
    """Every claimed slot of every pool, with the run holding it and whether its process lives."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    holders = []
    for pool in sorted(storage.get_concurrency_keys()):
        for slot in storage.get_concurrency_info(pool).claimed_slots:
            if slot.run_id == exclude_run:
                continue
            run = instance.get_run_by_id(slot.run_id)
            tags = dict(run.tags) if run else {}
            where = (f"process {tags[PID_TAG]} on {tags.get(HOST_TAG)}" if PID_TAG in tags
                     else "launched by the daemon")
            holders.append(SlotHolder(pool, slot.run_id, slot.step_key, run.job_name if run else "?",
                                      run.status.value if run else "DELETED", process_alive(tags) if run else False,
                                      where))
    return holders


def waiting_steps(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Pools this run has a step queued for without holding a slot."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    waiting = []
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        claimed = {(s.run_id, s.step_key) for s in info.claimed_slots}
        waiting.extend(pool for step in info.pending_steps
                       if step.run_id == run_id and (step.run_id, step.step_key) not in claimed)
    return sorted(set(waiting))


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark runs whose recorded process on this host is dead as failed and free every slot held by a run that is
    dead or has ended. Returns one line per run dealt with."""
    reaped = []
    host = socket.gethostname()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=GOING, tags={HOST_TAG: host})):
        if process_alive(dict(run.tags)) is False:
            instance.report_run_failed(run, f"m3-recon: the process that ran this run (pid {run.tags[PID_TAG]} on "
                                            f"{host}) is gone (killed, out of memory or rebooted); marked failed")
            reaped.append(f"run {run.run_id[:8]} ({run.job_name}): its process {run.tags[PID_TAG]} is gone; "
                          "marked failed")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holding = set(storage.get_concurrency_run_ids()) | {
            slot.run_id for pool in storage.get_concurrency_keys()
            for slot in storage.get_concurrency_info(pool).claimed_slots}
        for run_id in sorted(holding):
            run = instance.get_run_by_id(run_id)
            if run is None or run.status in ENDED:
                storage.free_concurrency_slots_for_run(run_id)
                reaped.append(f"run {run_id[:8]}: {'gone' if run is None else run.status.value.lower()}, "
                              "its pool slots freed")
    return reaped
