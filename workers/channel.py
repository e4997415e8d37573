"""Writing an outbox to a non-blocking channel socket: the one I/O step both ends of the channel share.

Neither end ever blocks on the other: the supervisor's selector and a worker's event loop call `write_some`
when the socket is writable, and it writes until the socket is full or the outbox is empty.
"""

from __future__ import annotations

import os
import socket

from proxy.outbox import Outbox


def write_some(sock: socket.socket, outbox: Outbox) -> bool:
    """Write queued frames until the socket would block; True when the outbox is empty.

    Raises OSError when the peer is gone (EPIPE, ECONNRESET): the caller decides what that means.
    """
    while True:
        head = outbox.head()
        if head is None:
            return True
        data, fds = head
        try:
            sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
        except (BlockingIOError, InterruptedError):
            return False
        for fd in outbox.sent(sent):
            os.close(fd)
