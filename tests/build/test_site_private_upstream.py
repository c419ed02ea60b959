"""A site cache in front of a private upstream (``edge-deploy site up --upstream-username
--upstream-password-file``): a real ``docker-registry`` with htpasswd login as the upstream, a real cache
that logs in to it; the password stays in the 0600 config, never in ``site.json``, a command line or the
output; bad logins are refused in one sentence before anything starts."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from edge_deploy.fleet import FleetError
from edge_deploy.fleet import site as sites
from edge_deploy.simulation.processes import free_port, terminate
from tests.build.cli_helpers import run_cli
from tests.support import need_tool

USER, PASSWORD = "depot-3", "s3cret pass-word!"


@pytest.mark.parametrize(
    ("upstream", "user", "password", "words"),
    [
        ("https://r.example", USER, None, "needs both a user name and a password"),
        ("https://r.example", None, PASSWORD, "needs both a user name and a password"),
        ("https://r.example", "a:b", PASSWORD, "no ':'"),
        ("https://r.example", "a\nb", PASSWORD, "no ':' and no control characters"),
        ("https://r.example", USER, "line1\nline2", "no control characters"),
        ("https://r.example", USER, "x" * 1025, "1-1024 characters"),
        ("http://registry.example:5000", USER, PASSWORD, "clear text"),
        ("http://10.0.0.5:5000", USER, PASSWORD, "clear text"),
    ],
)
def test_a_bad_upstream_login_is_one_sentence_before_anything_starts(
    upstream: str, user: str | None, password: str | None, words: str, tmp_path: Path
) -> None:
    with pytest.raises(FleetError, match=words) as exc:
        sites.site_up(
            "s",
            upstream,
            listen="127.0.0.1:5999",
            state_root=tmp_path,
            upstream_username=user,
            upstream_password=password,
        )
    assert str(exc.value).count(". ") == 0
    assert not (tmp_path / "s").exists()


def test_a_login_without_an_upstream_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="needs an upstream registry"):
        sites.site_up("s", None, state_root=tmp_path, upstream_username=USER, upstream_password=PASSWORD)


def test_https_and_loopback_upstreams_take_a_login() -> None:
    for upstream in (
        "https://registry.example",
        "http://127.0.0.1:5000",
        "http://localhost:5000",
        "http://[::1]:5",
    ):
        login = sites.check_credentials(upstream, USER, PASSWORD)
        assert login is not None and login.username == USER and PASSWORD not in repr(login)


def test_the_password_file_is_one_line_without_its_line_ending(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    for written, read in ((f"{PASSWORD}\n", PASSWORD), (f"{PASSWORD}\r\n", PASSWORD), (PASSWORD, PASSWORD)):
        f.write_text(written, newline="")
        assert sites.read_password_file(f) == read
    f.write_bytes(b"x" * 5000)
    with pytest.raises(FleetError, match="larger than 4 KiB"):
        sites.read_password_file(f)
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(FleetError, match="not UTF-8"):
        sites.read_password_file(f)
    with pytest.raises(FleetError, match="cannot be read"):
        sites.read_password_file(tmp_path / "absent")


def test_the_config_holding_the_password_is_owner_only(tmp_path: Path) -> None:
    site = sites.Site("s", str(tmp_path), "127.0.0.1:5050", "https://r.example", debug_port=15055)
    login = sites.check_credentials("https://r.example", USER, PASSWORD)
    path = sites.write_config(site, login)
    assert path.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(path.read_text())["proxy"] == {
        "remoteurl": "https://r.example",
        "username": USER,
        "password": PASSWORD,
    }


class TokenServer:
    """The upstream's token service (the Docker registry token protocol, as Harbor, GitLab or a cloud
    registry run it): Basic login in, a short-lived RS256 JWT out, signed by a key whose self-signed
    certificate the registry trusts (``auth.token.rootcertbundle``)."""

    ISSUER, SERVICE = "edge-test-issuer", "fleet-registry"

    def __init__(self, state: Path) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-test-token-signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = state / "token-signer.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.logins: list[str] = []  # the user of each token request, "" for none
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def token(self, scope: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for one in scope.split(" ") if scope else []:
            kind, _, rest = one.partition(":")
            repo, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.ISSUER, "sub": USER, "aud": self.SERVICE, "exp": now + 300, "nbf": now - 30,
            "iat": now, "jti": os.urandom(8).hex(), "access": access,
        }  # fmt: skip
        head = b64(json.dumps({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}).encode())
        signing_input = f"{head}.{b64(json.dumps(claims).encode())}"
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(sig)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                given = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                user = (
                    base64.b64decode(given[6:]).decode().split(":")[0] if given.startswith("Basic ") else ""
                )
                outer.logins.append(user)
                if given != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": outer.token(" ".join(query.get("scope", [])))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def private_upstream(tmp_path: Path) -> Iterator[tuple[str, TokenServer]]:
    """A docker-registry on loopback that serves only with a token from ``TokenServer`` (user ``USER``)."""
    binary = need_tool("docker-registry")
    port = free_port(16300, set())
    state = tmp_path / "upstream"
    state.mkdir()
    tokens = TokenServer(state)
    config = state / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "info", "accesslog": {"disabled": False}},
                "storage": {"filesystem": {"rootdirectory": str(state / "storage")}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "auth": {
                    "token": {
                        "realm": tokens.realm,
                        "service": TokenServer.SERVICE,
                        "issuer": TokenServer.ISSUER,
                        "rootcertbundle": str(tokens.bundle),
                    }
                },
            }
        )
    )
    with open(state / "log", "ab") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=log, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 401:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the private upstream did not answer: {(state / 'log').read_text()[-500:]}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", tokens
    finally:
        terminate(proc.pid, str(config), timeout=20)
        tokens.close()


def _push_blob(listen: str, tokens: TokenServer, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    bearer = {"Authorization": "Bearer " + tokens.token("repository:edge-deploy/private:pull,push")}
    start = httpx.post(f"http://{listen}/v2/edge-deploy/private/blobs/uploads/", headers=bearer, timeout=10)
    assert start.status_code == 202, start.text
    location = start.headers["location"]
    location = f"http://{listen}{location}" if location.startswith("/") else location
    put = httpx.put(
        f"{location}{'&' if '?' in location else '?'}digest={digest}",
        content=data,
        headers=bearer,
        timeout=30,
    )
    assert put.status_code == 201, put.text
    return digest


@pytest.mark.slow
def test_a_cache_logs_in_to_a_private_upstream_and_keeps_the_password_to_its_config(
    private_upstream: tuple[str, TokenServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream, tokens = private_upstream
    data = os.urandom(64 * 1024)
    digest = _push_blob(upstream, tokens, data)
    assert httpx.get(f"http://{upstream}/v2/edge-deploy/private/blobs/{digest}").status_code == 401
    taken: set[int] = set()
    with_login, without = free_port(16320, taken), free_port(16320, taken)
    pw = tmp_path / "upstream-password"
    pw.write_text(PASSWORD + "\n")
    root = str(tmp_path / "sites")
    code, out, err = run_cli(
        capsys, "site", "up", "depot", "--upstream", f"http://{upstream}", "--listen",
        f"127.0.0.1:{with_login}", "--upstream-username", USER, "--upstream-password-file", str(pw),
        "--state-root", root, "--json",
    )  # fmt: skip
    try:
        assert code == 0, err
        status = json.loads(out)
        assert status["answering"] and status["upstream_username"] == USER
        assert PASSWORD not in out + err
        got = httpx.get(
            f"http://127.0.0.1:{with_login}/v2/edge-deploy/private/blobs/{digest}",
            timeout=30,
            follow_redirects=True,
        )
        assert got.status_code == 200 and got.content == data  # robots need no login: the cache has it
        assert USER in tokens.logins  # the cache logged in to the upstream's token service
        site = sites.Site.load("depot", Path(root))
        assert PASSWORD not in Path(site.state_dir, "site.json").read_text()
        assert site.config.stat().st_mode & 0o777 == 0o600
        cmdline = Path(f"/proc/{site.pid}/cmdline").read_bytes().decode()
        assert PASSWORD not in cmdline

        # The same cache without the login cannot fetch what the upstream keeps private.
        plain = sites.site_up(
            "plain", f"http://{upstream}", listen=f"127.0.0.1:{without}", state_root=Path(root)
        )
        try:
            refused = httpx.get(
                f"http://127.0.0.1:{without}/v2/edge-deploy/private/blobs/{digest}",
                timeout=30,
                follow_redirects=True,
            )
            assert refused.status_code != 200 and refused.content != data
        finally:
            sites.site_down(plain, purge=True)
    finally:
        run_cli(capsys, "site", "down", "depot", "--purge", "--state-root", root)
