"""A threaded test server on 127.0.0.1 (another loopback address with `host`, or a
UNIX socket of the test directory): one thread per connection, at most `max_conns`
connections (`conns` counts them all), the acceptor bounded in time, stopped by
`close()`. Subclasses serve a connection in `_serve(sock)`."""

import os
import socket
import threading
import time


class ThreadedServer:
    def __init__(self, port=0, path=None, max_conns=50, host="127.0.0.1"):
        if path is not None:
            # A UNIX socket the engine (_smtpd) may connect to.
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(path))
            os.chmod(path, 0o666)
            self.port = None
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.port = self.sock.getsockname()[1]
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.max_conns = max_conns
        self.conns = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def close(self):
        self.stop.set()
        self.acceptor.join(5)
        for t in self.threads:
            t.join(5)
        self.sock.close()

    def _accept(self):
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            self.conns += 1
            if self.conns > self.max_conns:
                c.close()
                continue
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, c):
        raise NotImplementedError
