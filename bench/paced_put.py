#!/usr/bin/env python3
"""paced_put.py -- sequential ~1 KiB writes with a pause between them: put latency after idling.

One connection, N writes, PAUSE seconds between a response and the next write; prints the
p50/p90/max latency in ms. --mode k8s sends Groundwork's server-side apply of a Profile (the
watch benchmark's write); --mode etcd sends etcd's v3 JSON gateway put. The HTTP client is
watchlat.py's. Used for the "pause between writes" table in docs/benchmarks.md.
Usage: bench/paced_put.py --mode k8s|etcd --port PORT [--count 200] [--pause 0.01]
Needs: python3 only. Talks to 127.0.0.1 only.
"""
import argparse, asyncio, json, time

from watchlat import Conn, b64, pct

async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["k8s", "etcd"], required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--pause", type=float, default=0.01)
    args = ap.parse_args()
    c = Conn("127.0.0.1", args.port)
    await c.open()
    pad = "x" * 1024
    lat = []
    for i in range(args.count):
        if args.mode == "k8s":
            name = f"paced-{i % 100}"
            body = json.dumps({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Profile",
                               "metadata": {"name": name, "annotations": {
                                   "bench/t": str(time.time_ns()), "bench/v": pad}}}).encode()
            req = ("PATCH", f"/apis/groundwork.dev/v1alpha1/profiles/{name}?fieldManager=bench&force=true",
                   body, "application/apply-patch+yaml")
        else:
            body = json.dumps({"key": b64(f"/registry/paced/k{i % 100}"),
                               "value": b64(f"{time.time_ns()}:{pad}")}).encode()
            req = ("POST", "/v3/kv/put", body)
        t = time.perf_counter()
        st, h = await c.request(*req)
        out = await c.read_body(h)
        lat.append((time.perf_counter() - t) * 1000)
        if st >= 300:
            raise SystemExit(f"write {i}: HTTP {st}: {out[:200]!r}")
        await asyncio.sleep(args.pause)
    print(json.dumps({"mode": args.mode, "count": len(lat), "pause_s": args.pause,
                      "p50_ms": round(pct(lat, 50), 3), "p90_ms": round(pct(lat, 90), 3),
                      "max_ms": round(max(lat), 3)}))

if __name__ == "__main__":
    asyncio.run(main())
