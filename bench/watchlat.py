#!/usr/bin/env python3
"""watchlat.py -- watch fan-out latency: time from a write being sent to each watcher seeing it.

Groundwork's copy of ../shared/bench/watchlat.py (used by bench/raft-vs-etcd.sh and
bench/store-vs-etcd.sh). One change, in k8s mode: each watcher first lists the collection
(limit=1) and watches from the list's resourceVersion, as client-go informers do. The shared
script watches without a resourceVersion, which by Kubernetes semantics first replays every
existing object as a synthetic ADDED event (10,000 objects after the put runs), so its
watchers measured that replay (and counted objects of earlier runs as late deliveries), while
an etcd watch starts at the current revision. etcd mode is unchanged.

Measures: W watchers hold open watch streams on one prefix; one writer issues N ~1 KiB puts
at a fixed rate, each value carrying the send timestamp (time.time_ns, same machine clock).
Latency per (event, watcher) = receive time - send time. Also reports put latency.
Needs: python3 only (stdlib asyncio, raw HTTP/1.1, no packages).
Modes:
  --mode etcd  etcd v3 JSON gateway: POST /v3/kv/put, POST /v3/watch (streamed JSON)
  --mode k8s   Kubernetes-style: writes COLLECTION/NAME, watches COLLECTION?watch=true
               (newline-delimited JSON events {"type":..,"object":{..}}). --collection,
               --api-version, --kind, --spec-json, --write put|apply (apply = server-side apply
               PATCH, creates or updates), env AUTH_TOKEN for a bearer token. ConfigMaps carry
               the timestamp in .data.t, other kinds in annotation bench/t. Example for the
               project: --collection /apis/groundwork.dev/v1alpha1/profiles
               --api-version groundwork.dev/v1alpha1 --kind Profile --write apply
Output: one JSON line: watchers, events, deliveries expected/seen, watch p50/p99/max ms,
        put p50/p99 ms. Python parsing adds its own delay (tens of microseconds per message,
        more with many watchers on 2 cores): the figures are an upper bound, and comparable
        between targets measured with the same tool.
"""
import argparse, asyncio, base64, json, os, statistics, sys, time

def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]

class Conn:
    def __init__(self, host, port):
        self.host, self.port = host, port
    async def open(self):
        self.r, self.w = await asyncio.open_connection(self.host, self.port)
    async def request(self, method, path, body=b"", ctype="application/json"):
        tok = os.environ.get("AUTH_TOKEN")
        auth = f"Authorization: Bearer {tok}\r\n" if tok else ""
        hdr = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{auth}"
               f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n")
        self.w.write(hdr.encode() + body)
        await self.w.drain()
        status = await self.r.readline()
        headers = {}
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(status.split()[1]), headers
    async def read_body(self, headers):
        if "content-length" in headers:
            return await self.r.readexactly(int(headers["content-length"]))
        out = b""
        async for chunk in self.chunks(headers):
            out += chunk
        return out
    async def chunks(self, headers):
        if headers.get("transfer-encoding", "").lower() != "chunked":
            while True:  # stream until close
                data = await self.r.read(65536)
                if not data:
                    return
                yield data
        while True:
            size = int((await self.r.readline()).split(b";")[0], 16)
            if size == 0:
                await self.r.readline()
                return
            data = await self.r.readexactly(size)
            await self.r.readline()
            yield data

def b64(s):
    return base64.b64encode(s.encode()).decode()

async def watcher(args, idx, lat, ready, stop):
    c = Conn(args.host, args.port)
    await c.open()
    if args.mode == "etcd":
        prefix = args.prefix
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = json.dumps({"create_request": {"key": b64(prefix), "range_end": b64(end)}}).encode()
        st, h = await c.request("POST", "/v3/watch", body)
    else:
        st, h = await c.request("GET", f"{args.collection}?limit=1")
        if st != 200:
            raise SystemExit(f"list {idx}: HTTP {st}")
        rv = json.loads(await c.read_body(h))["metadata"]["resourceVersion"]
        st, h = await c.request("GET", f"{args.collection}?watch=true&resourceVersion={rv}")
    if st != 200:
        raise SystemExit(f"watch {idx}: HTTP {st}")
    dec = json.JSONDecoder()
    buf = ""
    created = args.mode != "etcd"
    if created:
        ready.release()
    async for chunk in c.chunks(h):
        now = time.time_ns()
        buf += chunk.decode()
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                msg, end_ = dec.raw_decode(buf)
            except ValueError:
                break
            buf = buf[end_:]
            if args.mode == "etcd":
                res = msg.get("result", {})
                if res.get("created") and not created:
                    created = True
                    ready.release()
                for ev in res.get("events", []):
                    v = base64.b64decode(ev["kv"].get("value", "")).split(b":", 1)[0]
                    lat.append((now - int(v)) / 1e6)
            else:
                obj = msg.get("object", {})
                t = (obj.get("data") or {}).get("t") or \
                    ((obj.get("metadata") or {}).get("annotations") or {}).get("bench/t")
                if t and msg.get("type") in ("ADDED", "MODIFIED"):
                    lat.append((now - int(t)) / 1e6)
        if stop.is_set():
            break
    c.w.close()

async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["etcd", "k8s"], default="etcd")
    ap.add_argument("--watchers", type=int, default=10)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--rate", type=float, default=100.0, help="puts per second")
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--prefix", default="/registry/watchbench/")
    ap.add_argument("--collection", default="/api/v1/namespaces/bench/configmaps")
    ap.add_argument("--api-version", default="v1")
    ap.add_argument("--kind", default="ConfigMap")
    ap.add_argument("--spec-json", default=None)
    ap.add_argument("--write", choices=["put", "apply"], default="put")
    args = ap.parse_args()

    lat, ready, stop = [], asyncio.Semaphore(0), asyncio.Event()
    tasks = [asyncio.create_task(watcher(args, i, lat, ready, stop)) for i in range(args.watchers)]
    for _ in range(args.watchers):
        await asyncio.wait_for(ready.acquire(), 30)
    w = Conn(args.host, args.port)
    await w.open()
    pad = "x" * args.value_size
    put_lat = []
    t0 = time.monotonic()
    for i in range(args.events):
        target = t0 + i / args.rate
        d = target - time.monotonic()
        if d > 0:
            await asyncio.sleep(d)
        ts = time.time_ns()
        if args.mode == "etcd":
            body = json.dumps({"key": b64(f"{args.prefix}k{i % 100}"),
                               "value": b64(f"{ts}:{pad}")}).encode()
            st, h = await w.request("POST", "/v3/kv/put", body)
        else:
            name = f"w-{i % 100}"
            if args.kind == "ConfigMap":
                obj = {"apiVersion": args.api_version, "kind": "ConfigMap",
                       "metadata": {"name": name, "namespace": "bench"},
                       "data": {"t": str(ts), "v": pad}}
            else:
                obj = {"apiVersion": args.api_version, "kind": args.kind,
                       "metadata": {"name": name, "annotations": {"bench/t": str(ts), "bench/v": pad}}}
                if args.spec_json:
                    obj["spec"] = json.loads(args.spec_json)
            body = json.dumps(obj).encode()
            if args.write == "apply":
                st, h = await w.request("PATCH", f"{args.collection}/{name}?fieldManager=bench&force=true",
                                        body, "application/apply-patch+yaml")
            else:
                st, h = await w.request("PUT", f"{args.collection}/{name}", body)
        await w.read_body(h)
        put_lat.append((time.time_ns() - ts) / 1e6)
        if st >= 300:
            raise SystemExit(f"put HTTP {st}")
    # let deliveries drain (bounded)
    expected = args.events * args.watchers
    deadline = time.monotonic() + 10
    while len(lat) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    for t in tasks:
        t.cancel()
    print(json.dumps({
        "mode": args.mode, "watchers": args.watchers, "events": args.events, "rate": args.rate,
        "expected": expected, "seen": len(lat),
        "watch_p50_ms": round(pct(lat, 50), 3), "watch_p99_ms": round(pct(lat, 99), 3),
        "watch_max_ms": round(max(lat), 3) if lat else None,
        "put_p50_ms": round(pct(put_lat, 50), 3), "put_p99_ms": round(pct(put_lat, 99), 3)}))

if __name__ == "__main__":
    asyncio.run(main())
