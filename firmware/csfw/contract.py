# The box's side of the contract (gateway/chairside/contract.json, explained
# in docs/contract.md).  Tests check these encoders against contract.json, so
# the two cannot drift.  Payloads are built with json.dumps on small dicts:
# at 1 Hz that allocation is fine; the UART paths stay allocation-free.
import json

SCHEMA_VERSION = 1
TOPIC_ROOT = "chairside/v1"

# sensor states (contract: messages.vitals.fields.st)
ST_OK = "ok"
ST_SEARCHING = "searching"
ST_NO_FINGER = "no_finger"
ST_PROBE_OFF = "probe_off"
ST_NO_DATA = "no_data"

OFFLINE_PAYLOAD = b'{"v":1,"state":"offline"}'

COMMANDS = ("nibp_start", "nibp_stop", "nibp_interval", "time", "status")


class Topics:
    """Topic strings for one box, built once at start-up."""

    def __init__(self, site, chair):
        base = TOPIC_ROOT + "/" + site + "/" + chair + "/"
        self.vitals = base + "vitals"
        self.nibp = base + "nibp"
        self.status = base + "status"
        self.resp = base + "resp"
        self.cmd = base + "cmd"
        self.stored = base + "stored"


def envelope(seq, boot, up, t, sync, hist):
    """Common fields every box payload carries (contract: common_fields)."""
    msg = {"v": SCHEMA_VERSION, "seq": seq, "boot": boot, "up": up, "t": t,
           "sync": 1 if sync else 0}
    if hist:
        msg["h"] = 1
    return msg


def link(env, p):
    """Kept readings (vitals, nibp) carry p, their link in the chain of
    readings the box holds unconfirmed (docs/contract.md, "End-to-end
    delivery")."""
    env["p"] = p
    return env


def vitals_payload(env, spo2, pr, sig, st, cuff=0, src=None):
    env["spo2"] = spo2
    env["pr"] = pr
    env["sig"] = sig
    env["st"] = st
    if cuff:
        env["cuff"] = 1
    if src is not None:
        env["src"] = src
    return json.dumps(env)


def nibp_payload(env, ok, sys_, dia, map_, pr, err=None):
    env["st"] = "ok" if ok else "error"
    env["sys"] = sys_
    env["dia"] = dia
    env["map"] = map_
    env["pr"] = pr
    if err is not None:
        env["err"] = err
    return json.dumps(env)


def status_payload(env, fields):
    env["state"] = "online"
    for key in fields:
        env[key] = fields[key]
    return json.dumps(env)


def resp_payload(env, cmd_id, cmd, ok, err=None):
    env["id"] = cmd_id
    env["cmd"] = cmd
    env["ok"] = 1 if ok else 0
    if err is not None:
        env["err"] = err
    return json.dumps(env)


class CommandError(ValueError):
    """A command the box refuses: `reason` (also str(err) on CPython), and the
    id and name (when readable) so the answer can say which command."""

    def __init__(self, reason, cmd_id="?", cmd="?"):
        super().__init__(reason)
        self.reason = reason
        self.cmd_id = cmd_id
        self.cmd = cmd


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def parse_command(payload):
    """Decode a command payload -> (cmd, id, args dict).

    Raises CommandError with a short reason; the box answers it on the resp
    topic instead of crashing.
    """
    try:
        msg = json.loads(payload)
    except ValueError:
        raise CommandError("not_json")
    if not isinstance(msg, dict):
        raise CommandError("not_object")
    if msg.get("v") != SCHEMA_VERSION:
        raise CommandError("schema_version")
    cmd = msg.get("cmd")
    cmd_id = msg.get("id")
    if not isinstance(cmd_id, str) or len(cmd_id) > 36:
        raise CommandError("bad_id")
    if cmd not in COMMANDS:
        raise CommandError("unknown_cmd", cmd_id)
    args = {}
    exp = msg.get("exp")
    if exp is not None:
        if not _is_int(exp) or exp < 0 or exp > 4102444800000:
            raise CommandError("bad_arg:exp", cmd_id, cmd)
        args["exp"] = exp
    if cmd == "nibp_interval":
        s = msg.get("s")
        if not _is_int(s) or s < 0 or s > 3600 or (0 < s < 60):
            raise CommandError("bad_arg:s", cmd_id, cmd)
        args["s"] = s
    elif cmd == "time":
        t = msg.get("t")
        if not _is_int(t) or t < 0 or t > 4102444800000:
            raise CommandError("bad_arg:t", cmd_id, cmd)
        args["t"] = t
        # boot/up echo the box message the gateway answered (stale check in
        # csfw.app); a time command without them is refused there
        boot = msg.get("boot")
        up = msg.get("up")
        if boot is not None or up is not None:
            if not _is_int(boot) or boot < 0 or boot > 2147483647:
                raise CommandError("bad_arg:boot", cmd_id, cmd)
            if not _is_int(up) or up < 0 or up > 4294967295000:
                raise CommandError("bad_arg:up", cmd_id, cmd)
            args["boot"] = boot
            args["up"] = up
    return cmd, cmd_id, args


def parse_stored(payload):
    """Decode the gateway's `stored` watermark -> (boot, seq).

    Raises ValueError (a short reason) for anything else; the box counts it
    and keeps every reading it holds."""
    try:
        msg = json.loads(payload)
    except ValueError:
        raise ValueError("not_json")
    if not isinstance(msg, dict) or msg.get("v") != SCHEMA_VERSION:
        raise ValueError("schema_version")
    boot = msg.get("boot")
    seq = msg.get("seq")
    if not _is_int(boot) or boot < 0 or boot > 0x7FFFFFFF:
        raise ValueError("bad_boot")
    if not _is_int(seq) or seq < -1 or seq > 0x7FFFFFFF:
        raise ValueError("bad_seq")
    return boot, seq
