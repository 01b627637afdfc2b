#!/usr/bin/env python3
"""A small Redfish BMC for the tests: one ComputerSystem whose power really starts and stops a
QEMU machine (TCG, no disk), with boot source override, basic auth, and a little inventory
(one NIC, one drive). Only what DSP0266 requires of the resources the client uses.

Usage: redfish_shim.py PORT WORKDIR USER PASSWORD   (listens on 127.0.0.1:PORT)
"""
import base64, json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, W, USER, PASSWORD = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
SYS = "/redfish/v1/Systems/1"
state = {"boot": {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled",
                  "BootSourceOverrideMode": "Legacy"}}


def qemu_pid():
    try:
        pid = int(open(os.path.join(W, "qemu.pid")).read().strip())
        os.kill(pid, 0)
        return pid
    except Exception:
        return None


def power_on():
    if qemu_pid():
        return
    order = "n" if state["boot"]["BootSourceOverrideTarget"] == "Pxe" else "c"
    subprocess.run(["qemu-system-x86_64", "-accel", "tcg", "-m", "64", "-display", "none", "-vga", "none",
                    "-nodefaults", "-monitor", "none", "-boot", "order=" + order, "-name", "gw-test-redfish",
                    "-daemonize", "-pidfile", os.path.join(W, "qemu.pid")], check=True)
    if state["boot"]["BootSourceOverrideEnabled"] == "Once":
        state["boot"]["BootSourceOverrideEnabled"] = "Disabled"
        state["boot"]["BootSourceOverrideTarget"] = "None"


def power_off():
    pid = qemu_pid()
    if not pid:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not qemu_pid():
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def system():
    return {
        "@odata.id": SYS, "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem", "Id": "1",
        "Name": "gw-test", "Manufacturer": "QEMU", "Model": "Standard PC (i440FX + PIIX, 1996)",
        "SerialNumber": "GW-TEST-0001", "UUID": "6ef7c7a6-4b5e-4f55-9b5e-2f0c2f0c2f0c",
        "BiosVersion": "SeaBIOS-1.16", "PowerState": "On" if qemu_pid() else "Off",
        "ProcessorSummary": {"Count": 1, "LogicalProcessorCount": 1},
        "MemorySummary": {"TotalSystemMemoryGiB": 0.0625},
        "Boot": dict(state["boot"], **{"BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "Cd", "BiosSetup"]}),
        "EthernetInterfaces": {"@odata.id": SYS + "/EthernetInterfaces"},
        "SimpleStorage": {"@odata.id": SYS + "/SimpleStorage"},
        "Actions": {"#ComputerSystem.Reset": {"target": SYS + "/Actions/ComputerSystem.Reset",
                    "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"]}},
    }


ROUTES = {
    "/redfish/v1": lambda: {"@odata.id": "/redfish/v1", "RedfishVersion": "1.11.0", "Systems": {"@odata.id": "/redfish/v1/Systems"}},
    "/redfish/v1/Systems": lambda: {"@odata.id": "/redfish/v1/Systems", "Members@odata.count": 1, "Members": [{"@odata.id": SYS}]},
    SYS: system,
    SYS + "/EthernetInterfaces": lambda: {"Members": [{"@odata.id": SYS + "/EthernetInterfaces/nic0"}]},
    SYS + "/EthernetInterfaces/nic0": lambda: {"Id": "nic0", "MACAddress": "52:54:00:AB:CD:01"},
    SYS + "/SimpleStorage": lambda: {"Members": [{"@odata.id": SYS + "/SimpleStorage/0"}]},
    SYS + "/SimpleStorage/0": lambda: {"Id": "0", "Devices": [{"Name": "disk0", "CapacityBytes": 8589934592}]},
}


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, code, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authed(self):
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") == want:
            return True
        self.reply(401, {"error": {"code": "Base.1.0.InsufficientPrivilege", "message": "authentication required"}})
        return False

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        if not self.authed():
            return
        f = ROUTES.get(self.path.rstrip("/"))
        self.reply(200, f()) if f else self.reply(404, {"error": {"message": "not found: " + self.path}})

    def do_PATCH(self):
        if not self.authed():
            return
        if self.path != SYS:
            return self.reply(405, {"error": {"message": "PATCH only on " + SYS}})
        b = self.body().get("Boot", {})
        for k in ("BootSourceOverrideTarget", "BootSourceOverrideEnabled", "BootSourceOverrideMode"):
            if k in b:
                state["boot"][k] = b[k]
        self.reply(204)

    def do_POST(self):
        if not self.authed():
            return
        if self.path != SYS + "/Actions/ComputerSystem.Reset":
            return self.reply(404, {"error": {"message": "no action " + self.path}})
        t = self.body().get("ResetType")
        if t == "On":
            power_on()
        elif t in ("ForceOff", "GracefulShutdown"):
            power_off()
        elif t in ("ForceRestart", "PowerCycle"):
            power_off(); power_on()
        else:
            return self.reply(400, {"error": {"message": f"ResetType {t!r} not allowed"}})
        self.reply(204)


def stop(*_):
    power_off()
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
