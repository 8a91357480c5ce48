"""Callback signatures, the SSRF guard, pinned connections and the sender's retries and shutdown."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest

from tests.receivers import HostileReceiver
from twopass.notify.guard import (
    CallbackResolutionError,
    CallbackURLError,
    check_url,
    embedded_ipv4,
    is_public,
    resolve_public,
)
from twopass.notify.sender import CallbackSender
from twopass.notify.signing import SIGNATURE_HEADER, sign, verify
from twopass.notify.transport import PinnedTransport

SECRET = "s3cr3t"
BODY = b'{"job_id":"abc","status":"succeeded"}'


def test_signature_round_trip() -> None:
    header = sign(SECRET, BODY)
    assert header.startswith("t=") and ",v1=" in header
    assert verify(SECRET, BODY, header)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),  # body changed
        lambda h, b: (h.replace("v1=", "v1=0"), b),  # signature changed
        lambda h, b: (h.replace("t=", "t=1"), b),  # timestamp changed
        lambda h, b: ("garbage", b),
        lambda h, b: ("", b),
    ],
)
def test_tampering_is_detected(tamper: object) -> None:
    header, body = tamper(sign(SECRET, BODY), BODY)  # type: ignore[operator]
    assert not verify(SECRET, body, header)


def test_wrong_secret_and_old_signatures_are_refused() -> None:
    assert not verify("other", BODY, sign(SECRET, BODY))
    old = sign(SECRET, BODY, timestamp=int(time.time()) - 3600)
    assert not verify(SECRET, BODY, old)
    assert verify(SECRET, BODY, old, tolerance=7200)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://10.0.0.5/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data/",  # the instance metadata service
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
    ],
)
def test_private_targets_are_refused(url: str) -> None:
    with pytest.raises(CallbackURLError, match="non-public"):
        check_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.216.34/hook", "must use https"),
        ("ftp://93.184.216.34/x", "must use https"),
        ("https:///nohost", "no host"),
        ("https://user:pw@93.184.216.34/", "credentials"),
        ("https://" + "a" * 3000 + ".com/", "longer than"),
        ("https://[not-an-ip/", "not a valid URL"),
    ],
)
def test_malformed_or_insecure_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(CallbackURLError, match=message):
        check_url(url)


def test_public_https_is_allowed_and_settings_open_the_local_escape_hatch() -> None:
    assert check_url("https://93.184.216.34/hook") == "https://93.184.216.34/hook"
    assert check_url("http://127.0.0.1:9/hook", allow_private=True, allow_http=True)


# -- the guard: IPv4 hidden in IPv6, scripted resolvers ------------------------------------------

PUBLIC_V4 = "93.184.216.34"


class ScriptedResolver:
    """Answers each lookup of a name with the next answer in its script (the last one repeats)."""

    def __init__(self, *answers: list[str] | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


NON_PUBLIC = [
    "127.0.0.1",
    "10.1.2.3",
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "169.254.169.254",
    "0.0.0.0",
    "224.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible (deprecated, still routed by some stacks)
    "::10.0.0.1",
    "::ffff:0:7f00:1",  # SIIT IPv4-translated
    "64:ff9b::7f00:1",  # NAT64 well-known prefix → 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 → the metadata service
    "64:ff9b:1::808:808",  # local-use NAT64: never global
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]
PUBLIC = [PUBLIC_V4, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses_are_refused_literal_or_resolved(address: str) -> None:
    assert not is_public(address)
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(CallbackURLError, match="non-public"):
        check_url(f"https://{host}/hook")
    resolver = ScriptedResolver([address])
    with pytest.raises(CallbackURLError, match="non-public"):
        check_url("https://hooks.example/hook", resolver=resolver)
    assert resolver.calls == [("hooks.example", 443)]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass_including_translated_forms_of_public_ipv4(address: str) -> None:
    assert is_public(address)
    assert check_url("https://hooks.example:8443/x", resolver=ScriptedResolver([address]))


def test_embedded_ipv4_unwraps_every_form() -> None:
    import ipaddress

    expect = {
        "::ffff:127.0.0.1": ["127.0.0.1"],
        "::127.0.0.1": ["127.0.0.1"],
        "::ffff:0:7f00:1": ["127.0.0.1"],
        "64:ff9b::7f00:1": ["127.0.0.1"],
        "2002:7f00:1::1": ["127.0.0.1"],
        "2001:0:4136:e378:8000:63bf:3fff:fdd2": ["65.54.227.120", "192.0.2.45"],
        "2606:4700:4700::1111": [],
    }
    for v6, v4s in expect.items():
        assert [str(a) for a in embedded_ipv4(ipaddress.IPv6Address(v6))] == v4s, v6


def test_one_bad_answer_among_good_ones_refuses_the_host() -> None:
    with pytest.raises(CallbackURLError, match=r"non-public address\(es\) \['127.0.0.1'\]"):
        check_url("https://hooks.example/", resolver=ScriptedResolver([PUBLIC_V4, "127.0.0.1"]))


def test_a_name_that_does_not_resolve_is_a_resolution_error() -> None:
    with pytest.raises(CallbackResolutionError, match="does not resolve"):
        check_url(
            "https://nowhere.example/", resolver=ScriptedResolver(socket.gaierror(-2, "Name or service not known"))
        )
    with pytest.raises(CallbackResolutionError):
        resolve_public("nowhere.example", 443, resolver=ScriptedResolver([]))


def test_literals_never_reach_the_resolver_and_private_mode_skips_the_check() -> None:
    resolver = ScriptedResolver(AssertionError("no lookup for a literal"))
    assert resolve_public("8.8.8.8", 443, resolver=resolver) == ["8.8.8.8"]
    assert resolve_public("127.0.0.1", 80, allow_private=True, resolver=resolver) == ["127.0.0.1"]
    assert resolve_public("hooks.test", 80, allow_private=True, resolver=ScriptedResolver(["10.0.0.7"])) == ["10.0.0.7"]


# -- pinned connections: the address checked is the address connected to ------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    local_address: str


@dataclass
class Receiver:
    """A callback receiver on loopback that answers from a script and records what it got."""

    host: str = "127.0.0.1"
    statuses: list[int] = field(default_factory=lambda: [200])
    delay: float = 0.0
    tls: ssl.SSLContext | None = None
    received: list[Received] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def __enter__(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.received.append(
                    Received(self.path, dict(self.headers.items()), body, self.connection.getsockname()[0])
                )
                time.sleep(outer.delay)
                status = outer.statuses[min(len(outer.received), len(outer.statuses)) - 1]
                self.send_response(status)
                if status in (301, 302, 307):
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:

            def record_sni(_sock: object, name: str | None, _ctx: ssl.SSLContext) -> None:
                self.server_names.append(name)

            self.tls.sni_callback = record_sni
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


class LoopbackInternet(httpcore.NetworkBackend):
    """Stands in for the internet (this machine has none): a public address maps to a loopback port.

    Every connection it is asked for is recorded; addresses it does not know are unreachable.
    """

    def __init__(self, routes: dict[tuple[str, int], int]) -> None:
        self.routes = routes
        self.connects: list[tuple[str, int]] = []
        self._real = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options: Any = None) -> httpcore.NetworkStream:  # fmt: skip
        self.connects.append((host, port))
        if (host, port) not in self.routes:
            raise httpcore.ConnectError(f"{host}:{port} unreachable")
        return self._real.connect_tcp("127.0.0.1", self.routes[(host, port)], timeout=timeout)


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for hooks.example, client context trusting its test CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("twopass test CA", ca_key, "twopass test CA", ca_key, True)
    leaf = cert("hooks.example", leaf_key, "twopass test CA", ca_key, False)
    folder = tmp_path_factory.mktemp("tls")
    (folder / "leaf.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "leaf.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def test_rebinding_dns_cannot_move_the_connection_to_loopback(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Public to the check, 127.0.0.1 to a second lookup: the one lookup is the one connected to."""
    server_tls, client_tls = tls_pair
    rebinding = ScriptedResolver([PUBLIC_V4], ["127.0.0.1"])
    with Receiver(tls=server_tls) as receiver:
        internet = LoopbackInternet({(PUBLIC_V4, 443): receiver.port})
        transport = PinnedTransport(resolver=rebinding, verify=client_tls, network_backend=internet)
        with httpx.Client(transport=transport) as client:
            response = client.post("https://hooks.example/done", content=b"{}")
        assert response.status_code == 200
        assert internet.connects == [(PUBLIC_V4, 443)]  # the checked address, not a second answer
        assert rebinding.calls == [("hooks.example", 443)]
        [got] = receiver.received
        assert got.headers["Host"] == "hooks.example" and got.path == "/done"
        assert receiver.server_names == ["hooks.example"]  # SNI is the name; the certificate was verified for it

        # A new connection resolves again, gets the rebound answer, and never connects.
        transport = PinnedTransport(resolver=rebinding, verify=client_tls, network_backend=internet)
        with httpx.Client(transport=transport) as client, pytest.raises(CallbackURLError, match="non-public"):
            client.post("https://hooks.example/done", content=b"{}")
        assert internet.connects == [(PUBLIC_V4, 443)]


def test_tls_is_verified_against_the_name_not_the_pinned_address(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:  # fmt: skip
    server_tls, client_tls = tls_pair
    with Receiver(tls=server_tls) as receiver:
        internet = LoopbackInternet({(PUBLIC_V4, 443): receiver.port})
        transport = PinnedTransport(resolver=ScriptedResolver([PUBLIC_V4]), verify=client_tls, network_backend=internet)
        with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError, match="certificate"):
            client.post("https://other.example/", content=b"{}")  # the certificate is for hooks.example
        assert receiver.received == []


def test_every_checked_address_is_tried_in_order(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls_pair
    with Receiver(tls=server_tls) as receiver:
        internet = LoopbackInternet({("8.8.8.8", 443): receiver.port})
        resolver = ScriptedResolver(["2606:4700:4700::1111", "8.8.8.8"])
        transport = PinnedTransport(resolver=resolver, verify=client_tls, network_backend=internet)
        with httpx.Client(transport=transport) as client:
            assert client.post("https://hooks.example/", content=b"{}").status_code == 200
        assert internet.connects == [("2606:4700:4700::1111", 443), ("8.8.8.8", 443)]


def test_sender_connects_to_the_pinned_loopback_address_with_the_name_as_host() -> None:
    """Local mode (private allowed), real sockets: the name resolves to 127.0.0.1, then to 127.0.0.2."""
    rebinding = ScriptedResolver(["127.0.0.1"], ["127.0.0.2"])
    results: list[bool] = []
    with Receiver(host="127.0.0.1") as receiver:
        sender = CallbackSender(
            SECRET, allow_private=True, allow_http=True, resolver=rebinding, on_result=results.append
        )
        sender.submit(f"http://hooks.test:{receiver.port}/cb", {"job_id": "j1", "status": "succeeded"})
        sender.close(timeout=5)
    assert results == [True]
    [got] = receiver.received
    assert got.local_address == "127.0.0.1"
    assert got.headers["Host"] == f"hooks.test:{receiver.port}"
    assert verify(SECRET, got.body, got.headers[SIGNATURE_HEADER])
    assert json.loads(got.body) == {"job_id": "j1", "status": "succeeded"}
    assert rebinding.calls == [("hooks.test", receiver.port)]


def test_sender_refuses_a_production_target_that_resolves_private() -> None:
    results: list[bool] = []
    with Receiver() as receiver:
        sender = CallbackSender(
            SECRET, allow_http=True, resolver=ScriptedResolver(["127.0.0.1"]), on_result=results.append
        )
        sender.submit(f"http://hooks.example:{receiver.port}/cb", {"job_id": "j2"})
        sender.close(timeout=5)
    assert results == [False] and receiver.received == []


# -- delivery: retries on the shared backoff, no redirects, a prompt close ---------------------------


def settle(sender: CallbackSender, timeout: float = 5.0) -> None:
    """Wait until every submitted callback is delivered or given up (before close() cuts retries short)."""
    deadline = time.monotonic() + timeout
    while sender.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sender.pending == 0


def local_sender(results: list[bool], **kwargs: Any) -> CallbackSender:
    kwargs.setdefault("base_delay", 0.01)
    return CallbackSender(SECRET, allow_private=True, allow_http=True, on_result=results.append, **kwargs)


def test_retryable_answers_are_retried_until_delivered() -> None:
    results: list[bool] = []
    with Receiver(statuses=[503, 429, 200]) as receiver:
        sender = local_sender(results)
        sender.submit(f"http://127.0.0.1:{receiver.port}/cb", {"job_id": "j3"})
        settle(sender)
        sender.close()
    assert results == [True] and len(receiver.received) == 3


@pytest.mark.parametrize("status", [302, 400, 410])
def test_redirects_and_client_errors_are_not_retried_or_followed(status: int) -> None:
    results: list[bool] = []
    with Receiver(statuses=[status]) as receiver:
        sender = local_sender(results)
        sender.submit(f"http://127.0.0.1:{receiver.port}/cb", {"job_id": "j4"})
        sender.close(timeout=5)
    assert results == [False] and len(receiver.received) == 1


def test_attempts_are_bounded() -> None:
    results: list[bool] = []
    with Receiver(statuses=[500]) as receiver:
        sender = local_sender(results, attempts=3)
        sender.submit(f"http://127.0.0.1:{receiver.port}/cb", {"job_id": "j5"})
        settle(sender)
        sender.close()
    assert results == [False] and len(receiver.received) == 3


def timed_close(sender: CallbackSender, timeout: float = 2.0) -> float:
    started = time.monotonic()
    sender.close(timeout=timeout)
    return time.monotonic() - started


def test_an_idle_sender_closes_at_once() -> None:
    assert timed_close(local_sender([])) < 0.05
    sender = local_sender([])
    with Receiver() as receiver:
        sender.submit(f"http://127.0.0.1:{receiver.port}/cb", {"job_id": "j6"})
        settle(sender)
        assert timed_close(sender) < 0.05  # used, then idle again


def test_close_waits_for_the_delivery_in_flight_and_no_longer() -> None:
    results: list[bool] = []
    with Receiver(delay=0.5) as receiver:
        sender = local_sender(results)
        sender.submit(f"http://127.0.0.1:{receiver.port}/cb", {"job_id": "j7"})
        time.sleep(0.1)
        waited = timed_close(sender, timeout=10)
    assert results == [True]
    assert 0.3 < waited < 1.5


def test_close_does_not_sit_out_a_backoff() -> None:
    results: list[bool] = []
    with Receiver(statuses=[503]) as receiver:
        sender = local_sender(results, base_delay=20, max_delay=20)
        sender.submit(f"http://127.0.0.1:{receiver.port}/cb", {"job_id": "j8"})
        deadline = time.monotonic() + 5
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the first try failed; the delivery is now waiting out its backoff
        waited = timed_close(sender, timeout=10)
    assert waited < 0.5
    assert results == [False] and len(receiver.received) == 1


def test_close_is_bounded_by_its_timeout_when_a_receiver_hangs() -> None:
    results: list[bool] = []
    with Receiver(delay=3) as receiver:
        sender = local_sender(results, timeout=10)
        for i in range(3):
            sender.submit(f"http://127.0.0.1:{receiver.port}/cb", {"job_id": f"j9-{i}"})
        time.sleep(0.1)
        waited = timed_close(sender, timeout=0.5)
        assert 0.45 < waited < 1.0
        # After close nothing new is accepted, and the caller hears so at once.
        sender.submit(f"http://127.0.0.1:{receiver.port}/cb", {"job_id": "late"})
        assert results[-1:] == [False]


# -- hostile receivers: bounded reads, a deadline per try, one destination cannot hold the rest ------


def until_true(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_an_endless_body_is_not_read_and_its_connection_is_closed() -> None:
    results: list[bool] = []
    with HostileReceiver("endless") as receiver:  # unthrottled: as fast as loopback goes
        sender = local_sender(results)
        sender.submit(receiver.url, {"job_id": "endless"})
        settle(sender)
        until_true(lambda: receiver.connections[0].closed_at is not None)
        conn = receiver.connections[0]
        assert conn.closed_at is not None and conn.closed_at - conn.opened_at < 1.0
        sent = receiver.sent
        sender.close()
    assert results == [True]  # a 2xx status line is the answer; the body is the receiver's business
    assert sent < 16 * 2**20  # what the kernel's socket buffers took before the reset, not a stream


def test_a_head_that_never_ends_is_cut_at_the_cap() -> None:
    results: list[bool] = []
    with HostileReceiver("bighead") as receiver:
        sender = local_sender(results, attempts=2)
        sender.submit(receiver.url, {"job_id": "bighead"})
        settle(sender)
        sender.close()
        until_true(lambda: all(c.closed_at is not None for c in receiver.connections))
        assert len(receiver.connections) == 2  # refused, retried, refused: each try cut off
    assert results == [False]


def test_each_try_has_one_deadline_however_the_receiver_paces_its_bytes() -> None:
    """A byte every 0.2 s never trips a per-read timeout; the 1 s deadline of the whole try does."""
    results: list[bool] = []
    with HostileReceiver("trickle", interval=0.2) as receiver:
        sender = local_sender(results, attempts=2, timeout=1.0)
        started = time.monotonic()
        sender.submit(receiver.url, {"job_id": "trickle"})
        settle(sender, timeout=10)
        took = time.monotonic() - started
        sender.close()
        until_true(lambda: all(c.closed_at is not None for c in receiver.connections))
        held = [c.closed_at - c.opened_at for c in receiver.connections if c.closed_at is not None]
    assert results == [False] and len(held) == 2
    assert all(0.9 < h < 1.5 for h in held), held
    assert took < 3.5  # two tries and one short backoff


def test_a_lookup_that_hangs_is_bounded_by_the_deadline_too() -> None:
    def slow_resolver(host: str, port: int) -> list[str]:
        time.sleep(3)
        return ["127.0.0.1"]

    transport = PinnedTransport(allow_private=True, resolver=slow_resolver, attempt_timeout=0.5)
    started = time.monotonic()
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectTimeout, match=r"0\.5 s deadline"):
        client.post("http://hooks.test:9/cb", content=b"{}")
    assert time.monotonic() - started < 1.0


def test_a_healthy_receiver_is_not_kept_waiting_by_trickling_ones() -> None:
    """Four receivers trickle (one of them sent two callbacks), and the healthy one is still answered at once."""
    results: list[bool] = []
    hostile = [HostileReceiver("trickle", interval=1.0) for _ in range(4)]
    with HostileReceiver("healthy") as healthy:
        for receiver in hostile:
            receiver.__enter__()
        try:
            sender = local_sender(results, threads=8, per_destination=2)
            for i, receiver in enumerate([hostile[0], *hostile]):
                sender.submit(receiver.url, {"job_id": f"hostile-{i}"})
            until_true(lambda: sum(r.open_connections for r in hostile) == 5)
            submitted = time.time()
            sender.submit(healthy.url, {"job_id": "healthy"})
            until_true(lambda: healthy.requests, timeout=2)
            delay = healthy.requests[0].at - submitted
            sender.close(timeout=0.1)
        finally:
            for receiver in hostile:
                receiver.__exit__()
    assert delay < 0.5
    got = healthy.requests[0]
    assert verify(SECRET, got.body, got.head[SIGNATURE_HEADER.lower()])


def test_one_destination_holds_at_most_its_share_of_the_threads() -> None:
    results: list[bool] = []
    with HostileReceiver("trickle", interval=1.0) as hostile, HostileReceiver("healthy") as healthy:
        sender = local_sender(results, threads=4, per_destination=2)
        for i in range(10):
            sender.submit(hostile.url, {"job_id": f"hostile-{i}"})
        until_true(lambda: hostile.open_connections == 2)
        for i in range(3):
            sender.submit(healthy.url, {"job_id": f"healthy-{i}"})
        until_true(lambda: len(healthy.requests) == 3, timeout=2)
        assert len(hostile.connections) == 2  # the other eight wait their turn, holding nothing
        assert sender.close(timeout=0.1) == 10
    assert results.count(True) == 3 and results.count(False) == 10


def test_what_is_left_at_shutdown_is_counted_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    results: list[bool] = []
    dropped: list[int] = []
    with HostileReceiver("silent") as silent:
        url = silent.url
        sender = local_sender(results, per_destination=1, on_dropped=dropped.append)
        for i in range(3):
            sender.submit(url, {"job_id": f"left-{i}"})
        until_true(lambda: silent.open_connections == 1)
        with caplog.at_level("WARNING", logger="twopass.notify.sender"):
            started = time.monotonic()
            assert sender.close(timeout=0.3) == 3
            assert time.monotonic() - started < 0.6
    assert dropped == [3] and results == [False, False, False]
    assert "3 callback(s) not delivered at shutdown: 2 queued, 1 still being tried" in caplog.text
    jobs = {getattr(r, "job_id", None) for r in caplog.records if "dropped at shutdown" in r.getMessage()}
    assert jobs == {"left-0", "left-1", "left-2"}
    sender.submit(url, {"job_id": "late"})  # after close: refused at once, and counted
    assert dropped == [3, 1] and results[-1] is False


def test_callbacks_submitted_together_do_not_share_one_idle_thread() -> None:
    """One idle thread, two callbacks at once: the one behind a hanging receiver does not take both."""
    results: list[bool] = []
    with HostileReceiver("silent") as silent, HostileReceiver("healthy") as healthy:
        sender = local_sender(results, timeout=3.0)
        sender.submit(healthy.url, {"job_id": "warm-up"})
        settle(sender)  # one thread, idle
        submitted = time.time()
        sender.submit(silent.url, {"job_id": "hangs"})
        sender.submit(healthy.url, {"job_id": "healthy"})
        until_true(lambda: len(healthy.requests) == 2, timeout=2)
        assert healthy.requests[1].at - submitted < 0.5
        sender.close(timeout=0.1)


def test_the_worker_counts_callbacks_dropped_at_shutdown_in_a_metric(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count reaches the metrics output although the worker's events flushed before the sender closed."""
    from twopass.config import Settings
    from twopass.worker.events import ObservedEvents
    from twopass.worker.main import build_events

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    events = build_events(Settings(callback_secret=SECRET, callback_allow_private=True, callback_allow_http=True))
    assert isinstance(events, ObservedEvents) and events.callbacks is not None
    with HostileReceiver("silent") as silent:
        for i in range(2):
            events.callbacks.submit(silent.url, {"job_id": f"cut-{i}"})
        until_true(lambda: silent.open_connections == 2)
        events.close()  # the sender's 2 s, then both are dropped
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert sum(sum(b.get("CallbacksDropped", [])) for b in blobs) == 2
    assert sum(sum(b.get("CallbacksFailed", [])) for b in blobs) == 2


def test_a_budgeted_request_goes_through_tls_too(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls_pair
    with Receiver(tls=server_tls) as receiver:
        internet = LoopbackInternet({(PUBLIC_V4, 443): receiver.port})
        transport = PinnedTransport(
            resolver=ScriptedResolver([PUBLIC_V4]),
            verify=client_tls,
            network_backend=internet,
            attempt_timeout=5.0,
            max_response_bytes=16 * 1024,
        )
        with httpx.Client(transport=transport) as client:
            assert client.post("https://hooks.example/done", content=b"{}").status_code == 200
        assert receiver.server_names == ["hooks.example"] and len(receiver.received) == 1
