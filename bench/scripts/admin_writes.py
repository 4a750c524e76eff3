# Admin write latency against the number of branches, by hand: `python3 bench/scripts/admin_writes.py BIN N WRITES`.
import http.client, os, socket, subprocess, sys, tempfile, time, threading, http.server, statistics

BIN = sys.argv[1]
N = int(sys.argv[2])
WRITES = int(sys.argv[3]) if len(sys.argv) > 3 else 200

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
up = "127.0.0.1:%d" % srv.server_address[1]

d = tempfile.mkdtemp()
os.makedirs(d + "/branches")
svcs = 20
org = "kind: org\nservices:\n" + "".join("  svc-%d:\n    hosts: [svc-%d]\n    endpoints: [\"%s\"]\n" % (s, s, up) for s in range(svcs))
open(d + "/org.yaml", "w").write(org)
for i in range(N):
    parent = "baseline" if i % 4 == 0 else "br-%d" % (i - 1)
    open(d + "/branches/br-%d.yaml" % i, "w").write("parent: %s\nservices:\n  svc-%d: {endpoints: [\"%s\"]}\n" % (parent, i % svcs, up))
env = dict(os.environ, MICROSTAX_ADMIN_TOKEN="t", RUST_LOG="warn")
p = subprocess.Popen([BIN, "run", "--config", d, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--workers", "1"], stdout=subprocess.PIPE, env=env)
line = p.stdout.readline().decode()
admin = line.split("admin on http://")[1].strip()
host, port = admin.split(":")
c = http.client.HTTPConnection(host, int(port))
lat = []
for i in range(WRITES):
    body = "parent: baseline\nservices:\n  svc-1: {endpoints: [\"%s\"], policy: {request_timeout_ms: %d}}\n" % (up, 1000 + i)
    t0 = time.perf_counter()
    c.request("PUT", "/branches/api-made", body=body, headers={"authorization": "Bearer t"})
    r = c.getresponse(); r.read()
    lat.append(time.perf_counter() - t0)
    assert r.status in (200, 201), r.status
lat.sort()
print("branches=%d writes=%d median=%.3f ms p90=%.3f ms" % (N, WRITES, statistics.median(lat) * 1e3, lat[int(len(lat) * 0.9)] * 1e3))
p.kill(); p.wait()
