"""Crash recovery at start-up: the runs a crash (kill, power cut) left unfinished.

- A run that had started gets a final result at once, status "interrupted": its in-doubt
  steps (started, not finished: what they did to the world is not known) and how to go on
  (`labctl resume RUN_ID`, an operator deciding on each in-doubt step). Nothing is re-run
  by itself: repeating a dispense or a transfer could add material twice, and only someone
  who can look at the vials may decide that.
- A run that was queued and never started did nothing yet. With `requeue_unstarted` (the
  MQTT agent, which acknowledged those submits to its clients) it is queued again, in its
  original order, under the same run id: running it is what was promised. Without it (the
  CLI, which starts one run of its own) it is only marked interrupted.
Either way every submitted run ends with one result: its own, or "interrupted".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labctl.bench.provenance import RESULT_DOC
from labctl.run_machine import FINAL_STATES
from labctl.store import Replay, RunRecord, RunStore, replay

log = logging.getLogger("labctl.bench")

#: how many of the newest runs start-up looks at
SCAN_LIMIT = 1000

#: (run_id, claims kept in the index) -> whether anything had to be put back
RestoreClaims = Callable[[str, dict[str, Any]], bool]


@dataclass
class Unfinished:
    """What start-up found: runs closed as interrupted, and never-started runs to queue
    again (oldest first)."""

    interrupted: list[str] = field(default_factory=list)
    unstarted: list[str] = field(default_factory=list)


def close_unfinished(store: RunStore, bench_id: str, *, requeue_unstarted: bool,
                     restore_claims: RestoreClaims | None = None) -> Unfinished:
    """Close the started runs a crash left unfinished with an "interrupted" result; list
    the never-started ones to queue again when `requeue_unstarted`, else only mark them
    interrupted. One unreadable record never keeps the bench down."""
    found = Unfinished()
    restore_submitted(store, restore_claims)
    finals = {s.value for s in FINAL_STATES} | {"cancelled"}
    for row in reversed(store.list(limit=SCAN_LIMIT)):  # oldest first: the queue's order
        run_id = row["run_id"]
        status = row["status"]
        if status in finals:
            continue
        try:
            rec = store.open(run_id)
            if status == "interrupted" and rec.result_path.exists():
                continue  # dealt with at an earlier start
            events = rec.events()
            r = replay(events)
            if r.finished is not None:
                continue
            if not r.order:  # no step ever started: it did nothing yet
                if requeue_unstarted:
                    found.unstarted.append(run_id)
                elif status != "interrupted":
                    store.index.upsert_run(run_id, status="interrupted")
                continue
            close_interrupted(store, rec, events, r, bench_id)
            found.interrupted.append(run_id)
        except Exception:  # one unreadable record must not keep the bench down
            log.exception("run %s: could not record its interruption", run_id)
            with contextlib.suppress(Exception):
                store.index.upsert_run(run_id, status="interrupted")
    return found


def restore_submitted(store: RunStore, restore_claims: RestoreClaims | None = None
                      ) -> list[str]:
    """Put back the first files of runs accepted but not yet started, from the index (a
    submit's one durable write; the folder was synced after the reply, and a power cut in
    between may have taken it); the run ids whose folder had to be written again. Each
    folder is synced, and its copy in the index dropped. `restore_claims(run_id, claims)`
    puts back the stock reservation and sample inputs kept with them (True: it had to)."""
    rebuilt = []
    claims = store.index.submitted_claims()
    for run_id, files in store.index.submissions().items():
        try:
            if RunRecord.restore(store.data_dir, run_id, files):
                log.warning("run %s: its folder was rebuilt from the run index (lost "
                            "before it reached the disk)", run_id)
                rebuilt.append(run_id)
            if restore_claims is not None and run_id in claims and \
                    restore_claims(run_id, claims[run_id]):
                log.warning("run %s: its stock reservation or sample inputs were put back "
                            "from the run index (lost before they reached the disk)", run_id)
            store.index.forget_submission(run_id)
        except Exception:  # one unwritable folder must not keep the bench down
            log.exception("run %s: could not restore its folder or claims (kept in the "
                          "index for the next start)", run_id)
    return rebuilt


def interruption_message(run_id: str, in_doubt: list[str]) -> str:
    """What an interrupted run's result says happened and how to go on."""
    message = (f"run {run_id} was interrupted: the process running it stopped (crash, "
               "kill or power cut) in the middle of the run")
    if in_doubt:
        message += (f"; step{'s' if len(in_doubt) > 1 else ''} {', '.join(in_doubt)} "
                    "started but did not finish, and what it did is not known")
    message += (f". Nothing was repeated. An operator may continue it with `labctl resume "
                f"{run_id}` (completed steps are kept"
                + ("; decide on each in-doubt step with --accept-in-doubt STEP or --redo "
                   "STEP" if in_doubt else "") + ").")
    return message


def close_interrupted(store: RunStore, rec: RunRecord, events: list[dict[str, Any]],
                      r: Replay, bench_id: str) -> None:
    """Journal the interruption and write the run's final result (status
    "interrupted", in-doubt steps, how to continue); nothing is re-run."""
    run_id = rec.run_id
    in_doubt = list(r.in_doubt)
    completed = list(r.completed)
    message = interruption_message(run_id, in_doubt)
    meta = rec.read_json("metadata.json") or {}
    instigator = meta.get("instigator") or {}
    started = next((e.get("t") for e in events if e.get("event") == "step_started"), None)
    last_heard = events[-1].get("t") if events else None
    rec.journal.append("interrupted", run_id=run_id, in_doubt=in_doubt,
                       completed=completed, last_event=last_heard, note=message)
    rec.close()
    rec.write_result({
        "schema": RESULT_DOC,
        "run_id": run_id,
        "status": "interrupted",
        "recipe": meta.get("recipe"),
        "parameters": meta.get("parameters_resolved"),
        "parameters_submitted": meta.get("parameters"),
        "instigator": instigator,
        "request_id": instigator.get("request_id"),
        "bench_id": bench_id,
        "started": started,
        "ended": last_heard,
        "figures_of_merit": [],
        "errors": [{"type": "Interrupted", "message": message, "in_doubt": in_doubt}],
        "in_doubt": in_doubt,
        "completed_steps": completed,
        "resume": f"labctl resume {run_id}",
        "fidelity": meta.get("fidelity"),
        "data_files": [{"path": d["path"], "sha256": d["sha256"]}
                       for d in rec.data_files()],
        "record": str(rec.folder),
    })
    store.index.upsert_run(run_id, status="interrupted", ended=last_heard, error=message)
