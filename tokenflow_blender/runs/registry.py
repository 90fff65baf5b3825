"""The tasks that are running, by slot ("edit", "install", "check", "farm", "convert"): plain Python,
no bpy. One task per slot at a time; Blender's timer ticks them all (:func:`tick_all`), quitting and
unregistering end them (:func:`shutdown_all`)."""

from __future__ import annotations

from .task import ProcessTask, Task

_TASKS: dict[str, Task] = {}


def get(slot: str) -> Task | None:
    """The task in a slot (running or the last finished one)."""
    return _TASKS.get(slot)


def running(slot: str) -> Task | None:
    task = _TASKS.get(slot)
    return task if task is not None and task.running else None


def put(slot: str, task: Task) -> Task:
    if running(slot):
        raise RuntimeError(f"a {slot} task is already running")
    _TASKS[slot] = task
    return task


def tick_all() -> bool:
    """Tick every running task; True while any still runs."""
    alive = False
    for task in list(_TASKS.values()):
        if task.running:
            alive = task.tick() or alive
    return alive


def shutdown_all(timeout: float = 5.0, quiet: bool = True) -> None:
    """End every running child (unregister, quit): the engine must not outlive Blender.

    `quiet` drops the callbacks first: while quitting or unregistering nothing may touch bpy.
    Engine runs are asked to stop all at once, then waited for; a farm task only stops watching
    (its `shutdown`): the farm job is not Blender's to end.
    """
    tasks = [t for t in _TASKS.values() if t.running]
    for task in tasks:
        if quiet:
            task.on_event = task.on_finish = None
        if isinstance(task, ProcessTask):
            task.cancel(timeout=timeout)
    for task in tasks:
        task.shutdown(timeout)


def forget_all() -> None:
    shutdown_all()
    _TASKS.clear()
