"""The configuration corpus of regress/configs/ (see its README.md): each file through
`smtpd -n`, accepted or refused with its exact `FILE:LINE: message`, and through
OpenSMTPD 6.8's `smtpd -n` when regress/install extracted it."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import tlscerts
from conftest import smtpd_bin

CORPUS = Path(__file__).parent / "configs"
FILES = CORPUS / "files"
OPENSMTPD = Path(os.environ.get("REGRESS_OPENSMTPD", "/opt/opensmtpd")) / "usr/sbin/smtpd"
CONFIGS = sorted(p.name for p in CORPUS.glob("*.conf"))


def header(text, key):
    """The value of the `# key:` line of a corpus file."""
    m = re.search(r"^# %s: (.*)$" % re.escape(key), text, re.M)
    assert m, "no '# %s:' line" % key
    return m.group(1)


def materialize(name, d):
    """The configuration `name` with @DIR@ replaced by `d`, and every file it names
    there made: certificates and keys, CA certificates, tables."""
    text = (CORPUS / name).read_text().replace("@DIR@", str(d))
    named_in = lambda t: sorted(set(re.findall(re.escape(str(d)) + r"/([\w.+-]+)", t)))  # noqa: E731
    todo = named_in(text)
    tlscerts.make_ca(d, "ca")
    for _ in range(100):
        if not todo:
            break
        f = todo.pop(0)
        stem, ext = os.path.splitext(f)
        target = d / f
        if target.exists():
            continue
        if ext in (".crt", ".key"):
            sub = d / ("leaf-" + stem)
            sub.mkdir()
            shutil.copy(d / "ca.pem", sub / "ca.pem")
            shutil.copy(d / "ca.key", sub / "ca.key")
            cert, key = tlscerts.make_leaf(sub, "leaf", "/CN=" + stem, san=stem)
            shutil.copy(cert, d / (stem + ".crt"))
            shutil.copy(key, d / (stem + ".key"))
            os.chmod(d / (stem + ".key"), 0o600)
        elif ext == ".pem":
            tlscerts.make_ca(d, stem, cn=stem)
        elif (FILES / f).exists():
            # An included file may name files too.
            content = (FILES / f).read_text().replace("@DIR@", str(d))
            target.write_text(content)
            todo.extend(named_in(content))
        else:
            target.write_text("")
    conf = d / name
    conf.write_text(text)
    return conf


def run(binary, conf, cwd):
    return subprocess.run([str(binary), "-n", "-f", str(conf)], capture_output=True, text=True,
                          timeout=60, cwd=cwd, stdin=subprocess.DEVNULL)


def test_the_corpus_is_large_enough():
    assert len(CONFIGS) >= 30
    refusals = [n for n in CONFIGS if header((CORPUS / n).read_text(), "expect") != "ok"]
    assert len(refusals) >= 8


@pytest.mark.parametrize("name", CONFIGS)
def test_smtpd_checks_it(tmp_path, name):
    text = (CORPUS / name).read_text()
    expect = header(text, "expect")
    header(text, "covers")
    conf = materialize(name, tmp_path)
    r = run(smtpd_bin(), conf, tmp_path)
    out = (r.stdout + r.stderr).strip()
    if expect == "ok":
        assert r.returncode == 0, out
        assert r.stdout.strip() == "configuration OK"
    else:
        line, msg = re.match(r"error (\d+): (.*)$", expect).groups()
        assert r.returncode == 1, out
        assert "%s:%s: %s" % (conf, line, msg) in out.splitlines(), out


@pytest.mark.parametrize("name", CONFIGS)
def test_opensmtpd_6_8_agrees(tmp_path, name):
    if not OPENSMTPD.exists():
        pytest.skip("OpenSMTPD 6.8 is not extracted in %s (regress/install does it)" % OPENSMTPD.parent.parent.parent)
    text = (CORPUS / name).read_text()
    want = header(text, "opensmtpd-6.8")
    conf = materialize(name, tmp_path)
    r = run(OPENSMTPD, conf, tmp_path)
    out = (r.stdout + r.stderr).strip()
    if want == "ok":
        assert r.returncode == 0, out
    else:
        assert want == "error"
        assert r.returncode != 0, out
