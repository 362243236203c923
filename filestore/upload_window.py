"""When the queue may work: `upload.hours`, windows of the server's local time.

"01:00-06:00" opens the queue at one in the night and closes it at six; "22:00-02:00" wraps
midnight; several windows are separated by commas; empty is always open. Outside the windows the
queue's workers take no new work: uploads wait, and remote deletes with them (the queue takes
its due rows in order, whatever their kind; a delete waits at most until the next opening). Work
already running when a window closes finishes. An operator who needs uploads now sets the hours
to "" on the admin page (every process applies it within a second).

Every question takes the time (`now`, seconds since the epoch) as an argument, so the workers,
the statistics and the tests ask about the same moment, and no test waits for a clock hour.
Local time is asked of the system at each question, so a daylight-saving change is followed
(a window in the hour that does not exist that night opens at the first time that does).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from datetime import datetime, timedelta

from .values import hours_spans

_DAY = 24 * 60
# Days looked ahead for the next opening or closing: every window recurs daily, so two suffice
# (a window opening later today, or one tomorrow); three cover a DST night's odd lengths.
_DAYS_AHEAD = 3


@dataclasses.dataclass(frozen=True)
class UploadWindow:
    # (start, end) minutes after local midnight; an end before its start wraps midnight, an end
    # of 1440 is midnight itself. Empty: always open.
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def always(self) -> bool:
        return not self.spans

    def is_open(self, now: float) -> bool:
        if not self.spans:
            return True
        local = time.localtime(now)
        minute = local.tm_hour * 60 + local.tm_min
        return any(_covers(span, minute) for span in self.spans)

    def next_opening(self, now: float) -> float | None:
        """When the queue opens next (a time after `now`); None while it is open (or always)."""
        if self.is_open(now):
            return None
        starts = (moment for moment in self._moments(now, 0) if moment > now)
        return min(starts, default=None)

    def closes_at(self, now: float) -> float | None:
        """When the window open at `now` closes; None if it never does (always open, or
        windows covering the whole day) or if it is closed now."""
        if self.always or not self.is_open(now):
            return None
        # The first end of a window after `now` where no other window goes on.
        ends = sorted(moment for moment in self._moments(now, 1) if moment > now)
        return next((end for end in ends if not self.is_open(end)), None)

    def _moments(self, now: float, which: int) -> list[float]:
        """The local times of every window's start (`which` 0) or end (1) from yesterday over
        the next few days, as timestamps."""
        today = datetime.fromtimestamp(now).date()
        moments = []
        for offset in range(-1, _DAYS_AHEAD):
            day = datetime.combine(today + timedelta(days=offset), datetime.min.time())
            for span in self.spans:
                # A naive datetime is local time: `timestamp()` asks the system (mktime), which
                # also resolves the hour a DST change skips.
                moments.append((day + timedelta(minutes=span[which])).timestamp())
        return moments


def _covers(span: tuple[int, int], minute: int) -> bool:
    start, end = span
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps midnight


@functools.lru_cache(maxsize=16)
def window_of(hours: str) -> UploadWindow:
    """The window of an `upload.hours` value (already checked by the config's parser), parsed
    once per distinct value: the workers ask on every round."""
    return UploadWindow(hours_spans(hours))
