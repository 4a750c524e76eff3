"""A test child for the process executor.

usage: child.py MODE PORT
MODE is a comma-separated set of: serve (answer HTTP on 127.0.0.1:PORT), ignore-term (ignore
SIGTERM), never-ready (do not listen), grandchild (fork a sleeping child first and print its pid).
It prints its pid, GREETING and PORT first, so tests can read them from the instance's log.
"""
import http.server
import os
import signal
import subprocess
import sys

modes = set(sys.argv[1].split(","))
port = int(sys.argv[2])
print(
    f"child pid={os.getpid()} greeting={os.environ.get('GREETING')} port={os.environ.get('PORT')}",
    flush=True,
)
if "ignore-term" in modes:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "grandchild" in modes:
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"grandchild pid={grandchild.pid}", flush=True)
if "never-ready" in modes:
    while True:
        signal.pause()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello {os.environ.get('GREETING')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        print("request " + format % args, file=sys.stderr, flush=True)


http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
