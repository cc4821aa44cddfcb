"""What every command shares: bad input ends in one line and exit status 2, never a traceback.

The line reads ``avvsr-<command>: <path>: <reason>`` (every :class:`~avvsr.errors.AVVSRError`
names its file first).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

BAD_INPUT_STATUS = 2


@contextlib.contextmanager
def exit_on_bad_input(prog: str) -> Iterator[None]:
    """Run the block; an :class:`~avvsr.errors.AVVSRError` in it prints ``prog: <error>`` on
    stderr and exits with :data:`BAD_INPUT_STATUS`."""
    from avvsr.errors import AVVSRError

    try:
        yield
    except AVVSRError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        raise SystemExit(BAD_INPUT_STATUS) from None
