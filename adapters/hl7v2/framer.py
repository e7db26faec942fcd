"""MLLP framing: ``<VT> payload <FS><CR>`` (0x0B … 0x1C 0x0D).

:class:`Deframer` is incremental and bounded: it keeps at most ``max_frame`` bytes of one
unfinished frame. Bytes before a start block are dropped (counted in ``dropped``). A frame that
grows past the cap raises :class:`FrameTooLarge` at once, before more is buffered, so a hostile
peer cannot make the listener grow. A start block inside a frame is kept as data (some senders put
a vertical tab inside a text field); only ``<FS><CR>`` ends a frame. A ``<FS>`` that is not followed
by ``<CR>`` is tolerated at the very end of a read (the ``<CR>`` may come in the next read) and
otherwise kept as data.
"""

from __future__ import annotations

SB = 0x0B
EB = 0x1C
CR = 0x0D
START = b"\x0b"
END = b"\x1c\x0d"
DEFAULT_MAX_FRAME = 1024 * 1024


class FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"MLLP frame exceeds {limit} bytes (at least {size})")
        self.size = size
        self.limit = limit


def frame(payload: bytes) -> bytes:
    return START + payload + END


class Deframer:
    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._in_frame = False
        self.dropped = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        return self._in_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Bytes in, complete frame payloads out. Raises FrameTooLarge (the caller closes)."""
        frames: list[bytes] = []
        view = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if not self._in_frame:
                start = data.find(START, i)
                if start < 0:
                    self.dropped += n - i
                    return frames
                self.dropped += start - i
                i = start + 1
                self._in_frame = True
                self._buf.clear()
                continue
            # Look for <FS><CR>, also across the boundary with what is buffered.
            if self._buf and self._buf[-1] == EB and data[i] == CR:
                del self._buf[-1]
                frames.append(bytes(self._buf))
                self._buf.clear()
                self._in_frame = False
                i += 1
                continue
            end = data.find(END, i)
            stop = n if end < 0 else end
            if len(self._buf) + (stop - i) > self.max_frame:
                size = len(self._buf) + (stop - i)
                self._buf = bytearray()
                self._in_frame = False
                raise FrameTooLarge(size, self.max_frame)
            self._buf += view[i:stop]
            if end < 0:
                return frames
            frames.append(bytes(self._buf))
            self._buf.clear()
            self._in_frame = False
            i = end + 2
        return frames
