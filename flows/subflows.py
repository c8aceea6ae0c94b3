"""The `train` stage's model processes as subflows of its flow run (the Prefect UI nests them).

A flow called inside a flow is a subflow: Prefect records a task run in the parent flow run
that stands for it and links the child's flow run to that task run. The `train` stage runs its
models in processes of their own, where Prefect cannot see the parent, so the stage does what
Prefect would: it creates the standing-in task run for each model (named `train_<mode>`, its
state following the process: running, completed, failed or cancelled), and the process,
finding the task run's id in SIIT_PARENT_TASK_RUN, creates its flow run linked to it.

Best effort on both sides: bookkeeping that fails (an older server, an API hiccup) is logged
and the models train as separate flow runs, as before; it never fails a training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any
from uuid import UUID

PARENT_ENV = "SIIT_PARENT_TASK_RUN"
log = logging.getLogger(__name__)


def _standing_in_task(mode: str) -> Any:
    from prefect import Task

    def stands_for_a_subflow() -> None:  # never runs: its task runs only stand for a process
        raise RuntimeError("the train stage's subflow task is not run")

    task = Task(name=f"train_{mode}", fn=stands_for_a_subflow)
    task._is_subflow_tracking_task = True  # as Prefect marks the ones it makes for subflows
    return task


def start_model_task_run(mode: str) -> UUID | None:
    """In the stage's flow: a running task run standing for the `mode` model's process, or
    None outside a flow run or when the server refuses."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running
    from prefect.utilities.asyncutils import run_coro_as_sync

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    try:
        task_run = run_coro_as_sync(
            _standing_in_task(mode).create_run(flow_run_context=context, parameters={})
        )
        with get_client(sync_client=True) as client:
            client.set_task_run_state(task_run.id, Running(), force=True)
        return task_run.id
    except Exception as exc:  # noqa: BLE001 - bookkeeping only
        log.warning("train_%s: no subflow link in Prefect (%s)", mode, exc)
        return None


def end_model_task_run(task_run_id: UUID | None, outcome: str, message: str = "") -> None:
    """outcome: completed, failed or cancelled (the process was stopped)."""
    if task_run_id is None:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Completed, Failed

    state = {"completed": Completed, "failed": Failed, "cancelled": Cancelled}[outcome]
    try:
        with get_client(sync_client=True) as client:
            client.set_task_run_state(task_run_id, state(message=message or None), force=True)
    except Exception as exc:  # noqa: BLE001 - bookkeeping only
        log.warning("task run %s: state %s not recorded (%s)", task_run_id, outcome, exc)


def run_as_subflow(flow: Callable[..., Any], **parameters: Any) -> Any:
    """In a model's process: run `flow` as the subflow of the task run named by
    SIIT_PARENT_TASK_RUN, or as a flow of its own when there is none."""
    parent = _parent_task_run()
    if parent is None:
        return flow(**parameters)
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    try:
        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run(
                flow=flow,
                parameters=flow.serialize_parameters(parameters),
                parent_task_run_id=parent,
                state=Pending(),
            )
    except Exception as exc:  # noqa: BLE001 - bookkeeping only
        log.warning("no subflow link in Prefect (%s): running as a flow of its own", exc)
        return flow(**parameters)
    return run_flow(flow, flow_run=flow_run, parameters=parameters)


def _parent_task_run() -> UUID | None:
    value = os.environ.get(PARENT_ENV, "")
    try:
        return UUID(value) if value else None
    except ValueError:
        log.warning("%s=%r is not a task run id: ignored", PARENT_ENV, value)
        return None
