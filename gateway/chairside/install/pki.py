"""``chairside certs``: the clinic's private CA and its server/box certificates.

Uses the ``openssl`` command-line tool (Debian package ``openssl``), so no
Python crypto dependency is needed.  Keys are ECDSA P-256: the Pico W's TLS
stack (mbedTLS) verifies them quickly, and they are small enough to keep the
CA certificate on the box.

    chairside certs --pki-dir DIR init [--name "Clinic CA"] [--days 3650]
    chairside certs --pki-dir DIR server --host broker.clinic.lan --host 10.0.0.2
    chairside certs --pki-dir DIR box --site clinic1 --chair 3

Layout of DIR (keys are written mode 0600):
    ca.crt ca.key           clinic CA (keep ca.key offline once all certs exist)
    server.crt server.key   broker certificate (copy to /etc/mosquitto/chairside/)
    boxes/<site>-<chair>.crt/.key   optional client certificates for boxes
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CA_DAYS = 3650
LEAF_DAYS = 825
CURVE = "prime256v1"


class PkiError(RuntimeError):
    """openssl is missing or failed, or a file would be overwritten."""


def _openssl(*args: str) -> str:
    binary = shutil.which("openssl")
    if binary is None:
        raise PkiError("openssl not found; install the Debian package openssl")
    proc = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def _new_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{CURVE}",
             "-out", str(path))
    path.chmod(0o600)


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise PkiError(f"refusing to overwrite {', '.join(existing)} (use --force)")


def init_ca(pki_dir: Path, name: str = "Chairside clinic CA", days: int = CA_DAYS,
            force: bool = False) -> Path:
    """Create the clinic CA; returns the path of ca.crt."""
    key, crt = pki_dir / "ca.key", pki_dir / "ca.crt"
    _refuse_overwrite([key, crt], force)
    _new_key(key)
    _openssl("req", "-x509", "-new", "-key", str(key), "-sha256", "-days", str(days),
             "-subj", f"/CN={name}/O=Chairside",
             "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", str(crt))
    return crt


def _issue(pki_dir: Path, stem: Path, cn: str, extensions: str, days: int,
           force: bool) -> Path:
    ca_key, ca_crt = pki_dir / "ca.key", pki_dir / "ca.crt"
    if not ca_key.exists() or not ca_crt.exists():
        raise PkiError(f"no CA in {pki_dir}; run `chairside certs --pki-dir {pki_dir} init`")
    key, crt = stem.with_suffix(".key"), stem.with_suffix(".crt")
    _refuse_overwrite([key, crt], force)
    _new_key(key)
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
        ext.write_text(extensions)
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={cn}/O=Chairside",
                 "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-CAserial", str(pki_dir / "ca.srl"), "-sha256",
                 "-days", str(days), "-extfile", str(ext), "-out", str(crt))
    return crt


def issue_server(pki_dir: Path, hosts: list[str], days: int = LEAF_DAYS,
                 force: bool = False, stem: str = "server") -> Path:
    """Server certificate valid for every host name / IP address in ``hosts``:
    the broker's (``server.crt``), or with ``stem`` another server's (the
    nurses' station: ``station.crt``)."""
    if not hosts:
        raise PkiError("server certificate needs at least one --host")
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            names.append(f"IP:{host}")
        except ValueError:
            names.append(f"DNS:{host}")
    ext = ("basicConstraints=critical,CA:FALSE\n"
           "keyUsage=critical,digitalSignature,keyAgreement\n"
           "extendedKeyUsage=serverAuth\n"
           f"subjectAltName={','.join(names)}\n")
    return _issue(pki_dir, pki_dir / stem, hosts[0], ext, days, force)


def issue_box(pki_dir: Path, site: str, chair: str, days: int = LEAF_DAYS,
              force: bool = False) -> Path:
    """Client certificate for one box (CN = its MQTT user name)."""
    ext = ("basicConstraints=critical,CA:FALSE\n"
           "keyUsage=critical,digitalSignature,keyAgreement\n"
           "extendedKeyUsage=clientAuth\n")
    name = f"box-{site}-{chair}"
    return _issue(pki_dir, pki_dir / "boxes" / name, name, ext, days, force)


def describe(crt: Path) -> str:
    """Subject, issuer and validity of a certificate (for the command's output)."""
    return _openssl("x509", "-in", str(crt), "-noout", "-subject", "-issuer", "-enddate").strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pki-dir", type=Path, required=True,
                        help="folder holding the CA and issued certificates")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    sub = parser.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="create the clinic CA")
    init.add_argument("--name", default="Chairside clinic CA", help="CA common name")
    init.add_argument("--days", type=int, default=CA_DAYS)
    server = sub.add_parser("server", help="issue the broker's certificate")
    server.add_argument("--host", action="append", required=True,
                        help="DNS name or IP address the boxes use (repeatable)")
    server.add_argument("--days", type=int, default=LEAF_DAYS)
    box = sub.add_parser("box", help="issue a box client certificate")
    box.add_argument("--site", required=True)
    box.add_argument("--chair", required=True)
    box.add_argument("--days", type=int, default=LEAF_DAYS)


def run(args: argparse.Namespace) -> int:
    pki_dir: Path = args.pki_dir
    try:
        if args.certs_command == "init":
            crt = init_ca(pki_dir, args.name, args.days, args.force)
        elif args.certs_command == "server":
            crt = issue_server(pki_dir, list(args.host), args.days, args.force)
        else:
            crt = issue_box(pki_dir, args.site, str(args.chair), args.days, args.force)
    except PkiError as exc:
        print(f"chairside certs: {exc}")
        return 1
    print(f"wrote {crt}\n{describe(crt)}")
    return 0
