"""Certificates for the TLS tests, made with openssl(1) into a test directory: a CA,
server certificates for several names, a client certificate from that CA and one from
another CA. EC P-256 keys (fast to make); RSA where a test asks for it."""

import subprocess
from pathlib import Path


def _run(args, cwd):
    subprocess.run(["openssl"] + args, cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d, name="ca", cn="Test CA"):
    d = Path(d)
    _run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
          "-keyout", name + ".key", "-out", name + ".pem", "-days", "30", "-subj", "/CN=" + cn,
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
    return d / (name + ".pem")


def make_leaf(d, name, subject, ca="ca", san=None, usage="serverAuth", rsa=False):
    """A certificate signed by `ca`: returns (cert path, key path). `san` is a DNS
    name or a list of them."""
    d = Path(d)
    key = ["-newkey", "rsa:2048"] if rsa else ["-newkey", "ec", "-pkeyopt",
                                               "ec_paramgen_curve:P-256"]
    _run(["req"] + key + ["-nodes", "-keyout", name + ".key", "-out", name + ".csr",
                          "-subj", subject], d)
    ext = ["extendedKeyUsage=" + usage, "basicConstraints=CA:FALSE"]
    if san:
        names = [san] if isinstance(san, str) else list(san)
        ext.append("subjectAltName=" + ",".join("DNS:" + n for n in names))
    (d / (name + ".ext")).write_text("\n".join(ext) + "\n")
    _run(["x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
          "-CAcreateserial", "-days", "30", "-out", name + ".pem", "-extfile", name + ".ext"], d)
    return d / (name + ".pem"), d / (name + ".key")


class Pki:
    """The usual set: CA, mx.test.example, other.test.example, a client certificate
    from the CA and one from a stranger CA."""

    def __init__(self, d):
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = make_ca(self.dir)
        self.mx = make_leaf(self.dir, "mx", "/CN=mx.test.example", san="mx.test.example")
        self.other = make_leaf(self.dir, "other", "/O=Other Org/CN=other.test.example",
                               san="other.test.example")
        self.client = make_leaf(self.dir, "client", "/O=Test Org/CN=client.test",
                                usage="clientAuth")
        make_ca(self.dir, "stranger", "Stranger CA")
        self.stranger = make_leaf(self.dir, "stray", "/CN=stray.test", ca="stranger",
                                  usage="clientAuth")

    def config(self):
        """pki and ca statements for these files."""
        return ("pki mx.test.example cert \"%s\"\npki mx.test.example key \"%s\"\n"
                "pki other.test.example cert \"%s\"\npki other.test.example key \"%s\"\n"
                "ca testca cert \"%s\"\n"
                % (self.mx[0], self.mx[1], self.other[0], self.other[1], self.ca))
