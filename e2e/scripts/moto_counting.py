"""moto's S3 server that logs the body bytes it sends, for the benchmark.

usage: moto_counting.py HOST PORT
The same server as `moto_server -H HOST -p PORT`, wrapped in a WSGI
middleware: after every response it prints one line to stdout,
"served METHOD PATH STATUS BYTES", BYTES being the body bytes the server
handed to the socket (a ranged GET counts its range). The bench sums these
for the object's path: the storage bytes served, counted at the server.
"""
import sys

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


class Counting:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        status = ["-"]

        def start(s, headers, exc_info=None):
            status[0] = s.split(" ", 1)[0]
            return start_response(s, headers, exc_info)

        body = self.app(environ, start)
        method = environ.get("REQUEST_METHOD", "-")
        path = environ.get("PATH_INFO", "-")
        return CountedBody(body, method, path, status)


class CountedBody:
    def __init__(self, body, method, path, status):
        self.body, self.method, self.path, self.status = body, method, path, status
        self.sent = 0

    def __iter__(self):
        for chunk in self.body:
            self.sent += len(chunk)
            yield chunk

    def close(self):
        if hasattr(self.body, "close"):
            self.body.close()
        print(f"served {self.method} {self.path} {self.status[0]} {self.sent}", flush=True)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, Counting(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
