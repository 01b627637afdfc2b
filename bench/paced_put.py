#!/usr/bin/env python3
"""paced_put.py -- sequential ~1 KiB writes with a pause between them: put latency after idling.

One connection, N writes, PAUSE seconds between a response and the next write; prints the
p50/p90/max latency in ms. --mode k8s sends Groundwork's server-side apply of a Profile (the
watch benchmark's write); --mode etcd sends etcd's v3 JSON gateway put. Used for the
"pause between writes" table in docs/benchmarks.md.
Usage: bench/paced_put.py --mode k8s|etcd --port PORT [--count 200] [--pause 0.01]
Needs: python3 only. Talks to 127.0.0.1 only.
"""
import argparse, base64, json, socket, time

ap = argparse.ArgumentParser()
ap.add_argument("--mode", choices=["k8s", "etcd"], required=True)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--count", type=int, default=200)
ap.add_argument("--pause", type=float, default=0.01)
args = ap.parse_args()

s = socket.create_connection(("127.0.0.1", args.port), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
pad = "x" * 1024
b64 = lambda x: base64.b64encode(x.encode()).decode()
lat = []
for i in range(args.count):
    if args.mode == "k8s":
        name = f"paced-{i % 100}"
        body = json.dumps({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Profile",
                           "metadata": {"name": name, "annotations": {
                               "bench/t": str(time.time_ns()), "bench/v": pad}}}).encode()
        head = (f"PATCH /apis/groundwork.dev/v1alpha1/profiles/{name}?fieldManager=bench&force=true"
                " HTTP/1.1\r\nContent-Type: application/apply-patch+yaml\r\n")
    else:
        body = json.dumps({"key": b64(f"/registry/paced/k{i % 100}"),
                           "value": b64(f"{time.time_ns()}:{pad}")}).encode()
        head = "POST /v3/kv/put HTTP/1.1\r\nContent-Type: application/json\r\n"
    req = (head + f"Host: 127.0.0.1:{args.port}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    t = time.perf_counter()
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    head_, _, rest = buf.partition(b"\r\n\r\n")
    lines = head_.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = int(next(l.split(b":", 1)[1] for l in lines if l.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += s.recv(65536)
    lat.append((time.perf_counter() - t) * 1000)
    if status >= 300:
        raise SystemExit(f"write {i}: HTTP {status}: {rest[:200]!r}")
    time.sleep(args.pause)
lat.sort()
print(json.dumps({"mode": args.mode, "count": len(lat), "pause_s": args.pause,
                  "p50_ms": round(lat[len(lat) // 2], 3), "p90_ms": round(lat[int(len(lat) * .9)], 3),
                  "max_ms": round(lat[-1], 3)}))
