#!/usr/bin/env python3
"""RSS retention after a burst of zstd-compressed traffic through a local ferry pair.

Starts an echo backend (ferry-bench --echo-backend), ferry-gateway and ferry-agent with
--compress zstd:3, records each tunnel process's VmRSS before, at the end of a burst of
RTB-like JSON echoed over CONNS connections (then closed), and SETTLE s after.
Usage: retention.py DIR [conns] [mib_per_conn] [settle_s], DIR holding ferry-bench, ferry-agent
and ferry-gateway (e.g. target/release after `cargo build --release --features bench`).
"""
import json, os, random, socket, subprocess, sys, threading, time

tgt = sys.argv[1]
conns = int(sys.argv[2]) if len(sys.argv) > 2 else 64
mib = float(sys.argv[3]) if len(sys.argv) > 3 else 8
settle = float(sys.argv[4]) if len(sys.argv) > 4 else 10
base = random.randint(20000, 50000)
backend, udp, entry = base, base + 1, base + 2

def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        d = {l.split(':')[0]: l.split()[1] for l in f if l.startswith(('VmRSS', 'VmHWM'))}
    return int(d['VmRSS']) / 1024, int(d['VmHWM']) / 1024

def wait_port(p):
    for _ in range(200):
        try:
            socket.create_connection(('127.0.0.1', p), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {p} never opened")

common = ['--compress', 'zstd:3', '--monitor', 'off', '--crypto', 'none']
procs = []
try:
    procs.append(subprocess.Popen([f'{tgt}/ferry-bench', '--echo-backend', f'127.0.0.1:{backend}'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_port(backend)
    gw = subprocess.Popen([f'{tgt}/ferry-gateway', '--listen', f'127.0.0.1:{udp}', '--backend', f'tcp://127.0.0.1:{backend}'] + common, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(gw)
    ag = subprocess.Popen([f'{tgt}/ferry-agent', '--listen', f'tcp://127.0.0.1:{entry}', '--gateway', f'127.0.0.1:{udp}'] + common, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(ag)
    wait_port(entry)
    time.sleep(1)
    before = (rss(ag.pid), rss(gw.pid))

    rng = random.Random(7)
    def record(i):
        return json.dumps({"id": f"req-{i}", "imp": [{"id": str(j), "banner": {"w": 300, "h": 250}, "bidfloor": rng.random()} for j in range(3)],
                           "site": {"domain": f"site{rng.randint(0, 500)}.example", "page": "https://example.com/articles/" + str(rng.randint(0, 10**6))},
                           "user": {"id": "%016x" % rng.getrandbits(64)}, "device": {"ua": "Mozilla/5.0 (X11; Linux x86_64)", "ip": "203.0.113.%d" % rng.randint(1, 254)}}).encode() + b"\n"
    blob = b"".join(record(i) for i in range(4000))
    total = int(mib * 1024 * 1024)
    errors = []
    def one():
        try:
            s = socket.create_connection(('127.0.0.1', entry))
            def reader():
                got = 0
                while got < total:
                    b = s.recv(1 << 16)
                    if not b: errors.append('eof'); return
                    got += len(b)
            t = threading.Thread(target=reader); t.start()
            sent = 0
            while sent < total:
                n = min(len(blob), total - sent)
                s.sendall(blob[:n]); sent += n
            t.join(); s.close()
        except OSError as e:
            errors.append(str(e))
    t0 = time.time()
    ts = [threading.Thread(target=one) for _ in range(conns)]
    for t in ts: t.start()
    for t in ts: t.join()
    dt = time.time() - t0
    at_end = (rss(ag.pid), rss(gw.pid))
    time.sleep(settle)
    after = (rss(ag.pid), rss(gw.pid))
    print(f"retention: {conns} conns x {mib} MiB zstd:3 burst in {dt:.1f} s, errors {len(errors)}; "
          f"VmRSS MiB agent/gateway: before {before[0][0]:.1f}/{before[1][0]:.1f}, "
          f"end of burst {at_end[0][0]:.1f}/{at_end[1][0]:.1f}, {settle:.0f} s after {after[0][0]:.1f}/{after[1][0]:.1f}; "
          f"peak (VmHWM) {after[0][1]:.1f}/{after[1][1]:.1f}")
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
