"""The bench service, one module per concept:

- service: `Bench`, the in-process service (life cycle, submit, control, views)
- protocol: `BenchService`, the shape every front end consumes (Bench here, the MQTT
  client remotely)
- queue: the run queue and its worker loop (`RunTicket`, `RunQueue`)
- recovery: runs a crash left unfinished, dealt with at start-up
- resume: resuming an interrupted run (`check_resume` → `ResumeCheck`, decisions)
- provenance: recipe.json, the run context (metadata.json) and result.json
- dedup: MQTT commands already answered
- events: the event stream to subscribers
- errors: the service's refusals
"""

from labctl.bench.errors import InDoubtError, NoRunInProgress, NothingToResume
from labctl.bench.events import SUBSCRIBER_QUEUE
from labctl.bench.provenance import (
    RECIPE_DOC,
    plan_document,
    recipe_info,
    resolved_parameters,
    safe_state_error,
)
from labctl.bench.queue import KEEP_FINISHED_TICKETS, RunQueue, RunTicket
from labctl.bench.resume import ResumeCheck, is_idempotent, replan_source
from labctl.bench.service import Bench

__all__ = [
    "KEEP_FINISHED_TICKETS",
    "RECIPE_DOC",
    "SUBSCRIBER_QUEUE",
    "Bench",
    "InDoubtError",
    "NoRunInProgress",
    "NothingToResume",
    "ResumeCheck",
    "RunQueue",
    "RunTicket",
    "is_idempotent",
    "plan_document",
    "recipe_info",
    "replan_source",
    "resolved_parameters",
    "safe_state_error",
]
