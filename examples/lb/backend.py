# A real HTTP server for the load-balancer demo (scripts/demo-lb.sh) and tests: one
# process per backend namespace, serving every port given (dual stack), answering any GET
# with "NAME:PORT\n". Usage: backend.py NAME DELAYFILE PORT...
# If the file DELAYFILE exists, each answer waits the number of milliseconds it holds
# (the `queue` scheduler test slows a backend down this way); if "status-NAME" exists
# beside it, answers carry that HTTP status (health check tests). Prints "ready" once
# every port listens.
import os, socket, stat, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

name, delayfile, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
statusfile = os.path.join(os.path.dirname(delayfile), "status-" + name)


class Dual(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 512

    def handle_error(self, request, client_address):
        # Health checks reset the connection once they have the status line.
        pass

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        super().server_bind()


def handler_for(port):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            try:
                with open(delayfile) as f:
                    time.sleep(int(f.read().strip() or "0") / 1000.0)
            except (FileNotFoundError, ValueError):
                pass
            body = f"{name}:{port}\n".encode()
            try:
                with open(statusfile) as f:
                    status = int(f.read().strip())
            except (FileNotFoundError, ValueError):
                status = 200
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *a):
            pass

    return H


servers = [Dual(("::", p), handler_for(p)) for p in ports]
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
if stat.S_ISFIFO(os.fstat(0).st_mode):
    sys.stdin.read()  # until the test closes our stdin (or kills us by pid)
else:
    threading.Event().wait()  # until killed (by pid)
