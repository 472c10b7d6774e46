#!/usr/bin/python3
"""A stand-in for the kvmtune hook, only for checking the e2e suite itself.

    tests/e2e/run.sh --bin tests/e2e/mock_kvmtune.py

It implements just enough of the contract the cases assert (for a host with
CPUs 0-1 and one node): ledger at /run/kvmtune/ledger.json, syslog lines
`guest=NAME stage=STAGE ...` with ident kvmtune, warn/refuse on host-passthrough
and disk cache, runtime pinning at `started`, XML rewrite at `restore`.  If the
suite passes against this and fails against kvmtune, the difference is
kvmtune's.  It is not a reference implementation: no placement logic at all.
"""

import fcntl
import json
import os
import re
import socket
import sys
import time

POLICY = "/etc/kvmtune/policy.yaml"
LEDGER_DIR = "/run/kvmtune"
LEDGER = LEDGER_DIR + "/ledger.json"
GUEST_CPUS = {1}
HOUSEKEEPING = {0}


def log(severity, text):
    pri = 3 * 8 + {"err": 3, "warning": 4, "info": 6}[severity]
    msg = f"<{pri}>{time.strftime('%b %d %H:%M:%S')} kvmtune[{os.getpid()}]: {text}"
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.settimeout(0.1)
        s.connect("/dev/log")
        s.send(msg.encode())
        s.close()
    except OSError:
        pass


def load_policy():
    """Flat `key: value` reader; anything YAML-ish it cannot read is an error."""
    policy = {"on_violation": "warn", "on_error": "allow", "emulator": "with-vcpus"}
    with open(POLICY) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            m = re.fullmatch(r"\s*([a-z_0-9]+):\s*([A-Za-z0-9_.-]*)\s*", line)
            if not m:
                raise ValueError(f"{POLICY}:{n}: cannot parse {line.strip()!r}")
            if m.group(2):
                policy[m.group(1)] = m.group(2)
    return policy


class Ledger:
    def __enter__(self):
        os.makedirs(LEDGER_DIR, exist_ok=True)
        self.lock = open(LEDGER_DIR + "/ledger.lock", "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            with open(LEDGER) as f:
                self.data = json.load(f)
        except (OSError, ValueError):
            self.data = {"version": 1, "guests": {}}
        return self.data["guests"]

    def __exit__(self, *exc):
        tmp = LEDGER + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.rename(tmp, LEDGER)
        self.lock.close()


def violations(xml):
    found = []
    if re.search(r"<cpu[^>]*mode=['\"]host-passthrough['\"]", xml):
        found.append("cpu mode host-passthrough (rule 5: use host-model)")
    for cache in re.findall(r"<driver[^>]*\bcache=['\"]([a-z]+)['\"]", xml):
        if cache != "none":
            found.append(f"disk cache='{cache}' (rule 2.1: use cache='none')")
    return found


def uuid_of(xml):
    m = re.search(r"<uuid>([^<]+)</uuid>", xml)
    return m.group(1) if m else ""


def pin(guest, emulator):
    with open(f"/run/libvirt/qemu/{guest}.pid") as f:
        pid = int(f.read().strip())
    with open(f"/run/libvirt/qemu/{guest}.xml") as f:
        vcpus = {int(t) for t in re.findall(r"<vcpu id='\d+' pid='(\d+)'/>", f.read())}
    emu = GUEST_CPUS if emulator == "with-vcpus" else HOUSEKEEPING
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), GUEST_CPUS if int(tid) in vcpus else emu)
        except OSError:
            pass


def rewrite_for_restore(xml):
    n = int(re.search(r"<vcpu[^>]*>(\d+)</vcpu>", xml).group(1))
    xml = re.sub(r"(<driver[^>]*\bcache=['\"])[a-z]+(['\"])", r"\1none\2", xml)
    if "<cputune>" not in xml:
        pins = "".join(f"    <vcpupin vcpu='{v}' cpuset='1'/>\n" for v in range(n))
        xml = re.sub(r"(<vcpu[^>]*>\d+</vcpu>\n)", r"\1  <cputune>\n" + pins + "  </cputune>\n", xml, count=1)
    return xml


def main():
    if sys.argv[1:2] == ["--version"]:
        print("mock_kvmtune (e2e suite self-test)")
        return 0
    guest, op = sys.argv[1], sys.argv[2]
    xml = sys.stdin.read()
    started = time.monotonic()
    try:
        policy = load_policy()
    except (OSError, ValueError) as e:
        log("err", f"guest={guest} stage={op} error: {e}; on_error=allow, not tuning")
        if op == "restore":
            sys.stdout.write(xml)
        return 0
    if op == "prepare":
        found = violations(xml)
        for v in found:
            log("warning", f"guest={guest} stage=prepare violation: {v}")
        if found and policy["on_violation"] == "refuse":
            sys.stderr.write(f"kvmtune: guest '{guest}' refused: {found[0]}\n")
            return 1
        with Ledger() as guests:
            guests[guest] = {"uuid": uuid_of(xml), "cpus": "1", "nodes": "0"}
        log("info", f"guest={guest} stage=prepare placed cpus=1 nodes=0")
    elif op == "started":
        pin(guest, policy["emulator"])
        ms = (time.monotonic() - started) * 1000
        log("info", f"guest={guest} stage=started pinned vcpus=1 emulator={policy['emulator']} took={ms:.1f}ms")
    elif op == "restore":
        sys.stdout.write(rewrite_for_restore(xml))
        log("info", f"guest={guest} stage=restore pinned and cache=none")
    elif op == "reconnect":
        with Ledger() as guests:
            guests.setdefault(guest, {"uuid": uuid_of(xml), "cpus": "1", "nodes": "0"})
        log("info", f"guest={guest} stage=reconnect")
    elif op == "release":
        with Ledger() as guests:
            guests.pop(guest, None)
        log("info", f"guest={guest} stage=release freed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
