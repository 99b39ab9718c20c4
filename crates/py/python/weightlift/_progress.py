"""A progress bar for long loads: bytes loaded, GB/s and time left.

tqdm draws it when installed (the bar Python users know); otherwise one
line on stderr, redrawn at most ten times a second.
"""

import sys
import time
from typing import Any, Optional


class Progress:
    """Counts bytes toward `total`; `update(n)` after each tensor, `close()` at the end."""

    def __init__(self, total: int, desc: str = "weightlift") -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.bar: Optional[Any] = None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,
                desc=desc,
                dynamic_ncols=True,
            )
        else:
            self.desc = desc
            self._draw(force=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            self._draw()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._draw(force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = f"{left:.1f} s left" if left != float("inf") else "-- s left"
        sys.stderr.write(
            f"\r{self.desc}: {pct:5.1f}% {self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB"
            f" {rate / 1e9:.2f} GB/s {eta}  "
        )
        sys.stderr.flush()


class NoProgress:
    """Progress that shows nothing."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress(enabled: bool, total: int) -> Any:
    return Progress(total) if enabled else NoProgress()
