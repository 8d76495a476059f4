"""Rich progress bars (per file + total), or nothing at all when not wanted."""

from __future__ import annotations

import threading


class NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add(self, label: str, total: int | None, completed: int = 0):
        return None

    def advance(self, task, n: int) -> None:
        pass

    def reset(self, task, completed: int = 0) -> None:
        pass

    def done(self, task) -> None:
        pass

    def set_total(self, task, total: int) -> None:
        pass

    def advance_total(self, n: int, total: int | None = None) -> None:
        pass


class RichProgress(NullProgress):
    """One bar per file in flight plus a total bar (bytes, rate, ETA); finished files drop off."""

    def __init__(self, title: str):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._p = Progress(TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                           transient=True, refresh_per_second=8)
        self._title = title
        self._lock = threading.Lock()
        self._total = None

    def __enter__(self):
        self._p.__enter__()
        self._total = self._p.add_task(f"[bold]{self._title}", total=0)
        return self

    def __exit__(self, *exc):
        return self._p.__exit__(*exc)

    def add(self, label: str, total: int | None, completed: int = 0):
        with self._lock:
            short = label if len(label) <= 40 else "…" + label[-39:]
            task = self._p.add_task(short, total=total, completed=completed)
            t = self._p.tasks[self._total]
            self._p.update(self._total, total=(t.total or 0) + (total or 0), advance=completed)
            return task

    def advance(self, task, n: int) -> None:
        if task is None:
            return
        self._p.advance(task, n)
        self._p.advance(self._total, n)

    def reset(self, task, completed: int = 0) -> None:
        if task is None:
            return
        with self._lock:
            before = self._p.tasks[[t.id for t in self._p.tasks].index(task)].completed
            self._p.update(task, completed=completed)
            self._p.advance(self._total, completed - before)

    def done(self, task) -> None:
        if task is not None:
            self._p.remove_task(task)

    def set_total(self, task, total: int) -> None:
        if task is None:
            return
        with self._lock:
            old = self._p.tasks[[t.id for t in self._p.tasks].index(task)].total or 0
            self._p.update(task, total=total)
            t = self._p.tasks[[t.id for t in self._p.tasks].index(self._total)]
            self._p.update(self._total, total=(t.total or 0) + total - old)

    def advance_total(self, n: int, total: int | None = None) -> None:
        """Only the total bar (verify: one bar for all files)."""
        if total is not None:
            self._p.update(self._total, total=total)
        self._p.advance(self._total, n)


def make_progress(show: bool, title: str):
    return RichProgress(title) if show else NullProgress()
