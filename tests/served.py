"""A threaded HTTP server on 127.0.0.1 for download tests: no test reaches the internet.

It serves bytes by path, and can ignore Range requests, drop a connection half-way or answer 404;
it can also announce more than it sends, send more than the file, send a byte at a time slowly or redirect.
``silent()`` is a server that accepts connections and never answers.
"""

import re
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Served:
    """What the test server serves, how, and the requests it saw."""

    def __init__(self):
        self.files = {}  # path: bytes
        self.ignore_range = set()  # paths answered 200 whatever the Range
        self.drop_once = {}  # path: bytes to send before closing the connection, once
        self.announce = {}  # path: the Content-Length announced instead of the true one
        self.overflow = {}  # path: zero bytes sent after the file, with no Content-Length
        self.drip = {}  # path: seconds between the bytes, sent one at a time
        self.redirects = {}  # path: where it redirects to (302)
        self.requests = []  # (path, Range header)
        self.url = None

    def add(self, path, data):
        self.files[path] = data
        return f"{self.url}{path}"


def _handler(served):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            asked = self.headers.get("Range")
            served.requests.append((self.path, asked))
            if self.path in served.redirects:
                self.send_response(302)
                self.send_header("Location", served.redirects[self.path])
                self.end_headers()
                return
            body = served.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if asked and self.path not in served.ignore_range:
                start = int(re.match(r"bytes=(\d+)-", asked).group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            if self.path not in served.overflow:
                self.send_header("Content-Length", str(served.announce.get(self.path, len(body) - start)))
            self.end_headers()
            drop = served.drop_once.pop(self.path, None)
            try:
                self._send(body[start:start + drop] if drop is not None else body[start:])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading

        def _send(self, data):
            if self.path in served.drip:
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(served.drip[self.path])
                return
            self.wfile.write(data)
            self.wfile.write(bytes(served.overflow.get(self.path, 0)))

        def log_message(self, *args):
            pass

    return Handler


@contextmanager
def serving():
    """A running server and what it serves; stopped on exit."""
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def silent():
    """The URL of a server that accepts connections (the kernel does, from its backlog) and never answers."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
