#!/usr/bin/python3
"""Serve Keystone's public WSGI app (Debian's python3-keystone) on loopback with the stdlib.

Started by keystone-start.sh. No Apache, uwsgi or gunicorn: wsgiref is enough for tests, and
pbr's keystone-wsgi-public would listen on all interfaces. Single-threaded by default: the
sqlite database behind it is the real bottleneck, and one request at a time (about 0.25 s for
a token) keeps sqlite out of trouble. --threaded serves requests in threads.

Must run under Debian's /usr/bin/python3 (a pyenv python3 cannot import Debian's packages).
"""

import argparse
import os
import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class Handler(WSGIRequestHandler):
    # A client that connects and never sends would otherwise block the single-threaded
    # server forever.
    timeout = 60

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))


class Server(WSGIServer):
    # Parallel test processes (and Swift's authtoken) connect at once; the default backlog of 5
    # makes the kernel drop SYNs and clients stall for a second or more.
    request_queue_size = 128


class ThreadedServer(socketserver.ThreadingMixIn, Server):
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--config-dir", required=True, help="directory holding keystone.conf")
    ap.add_argument("--threaded", action="store_true")
    args = ap.parse_args()

    # Keystone finds its config through these (keystone.server.wsgi / flask core).
    os.environ["OS_KEYSTONE_CONFIG_DIR"] = args.config_dir
    os.environ["OS_KEYSTONE_CONFIG_FILES"] = "keystone.conf"
    # oslo.config parses sys.argv when the app loads and would reject our own options.
    sys.argv = sys.argv[:1]

    from keystone.server.wsgi import initialize_public_application

    app = initialize_public_application()
    server_class = ThreadedServer if args.threaded else Server
    httpd = make_server(args.host, args.port, app, server_class=server_class, handler_class=Handler)
    sys.stderr.write("keystone-serve: listening on http://%s:%d/\n" % (args.host, args.port))
    sys.stderr.flush()
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
