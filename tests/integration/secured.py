"""A secured Kafka broker and a secured Elasticsearch node for the security tests: the same
programs and downloads as the local stack, on other ports, with certificates this module
generates at test time (never committed).

Kafka listeners (one broker, KRaft):
- SASL_SSL and SASL_PLAINTEXT, each accepting PLAIN and SCRAM-SHA-512,
- SSL with required client certificates (mutual TLS),
- PLAINTEXT for the broker's own use and the health check only.
Elasticsearch: security on, HTTPS with the test CA, a file-realm user and API keys.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.stack.base import StackError
from pipeline.stack.elasticsearch import Elasticsearch
from pipeline.stack.kafka import Kafka

# Credentials exist only for these throw-away services; tests also check none of them leaks.
KAFKA_USER, KAFKA_PASSWORD = "finsent-worker", "kafka-pw-7c1d0e2b9a"
ES_USER, ES_PASSWORD = "finsent-admin", "es-pw-55e2b7f0c4"
CLIENT_KEY_PASSWORD = "client-key-pw-93af21"


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    server_pem: Path  # key + chain in one file: Kafka's PEM keystore
    client_cert: Path
    client_key: Path  # encrypted with CLIENT_KEY_PASSWORD


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key, password: str | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def make_certificates(directory: Path) -> Certificates:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("finsent test CA"))
        .issuer_name(_name("finsent test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage, san: list | None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client_cert = leaf("finsent-worker", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    pem = lambda cert: cert.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    files = Certificates(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        server_pem=directory / "server.pem",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    files.ca.write_bytes(pem(ca_cert))
    files.server_cert.write_bytes(pem(server_cert) + pem(ca_cert))
    files.server_key.write_bytes(_pem_key(server_key))
    files.server_pem.write_bytes(_pem_key(server_key) + pem(server_cert) + pem(ca_cert))
    files.client_cert.write_bytes(pem(client_cert))
    files.client_key.write_bytes(_pem_key(client_key, CLIENT_KEY_PASSWORD))
    for path in directory.iterdir():
        path.chmod(0o644)  # the Elasticsearch node runs as its own user
    return files


def _shared_downloads(home: Path, stack_home: Path) -> None:
    """Reuse the local stack's downloaded jars and zip (a different home keeps state apart)."""
    home.mkdir(parents=True, exist_ok=True)
    link = home / "downloads"
    if not link.exists():
        (stack_home / "downloads").mkdir(parents=True, exist_ok=True)
        link.symlink_to(stack_home / "downloads")


class SecuredKafka(Kafka):
    name = "kafka-secured"
    port = 19092  # PLAINTEXT: inter-broker and health check only
    controller_port = 19094
    sasl_ssl_port, sasl_plaintext_port, ssl_port = 19093, 19095, 19096

    def __init__(self, home: Path, stack_home: Path, certs: Certificates):
        _shared_downloads(home, stack_home)
        super().__init__(home)
        self.certs = certs

    def _listener_properties(self) -> list[str]:
        plain_users = f'user_{KAFKA_USER}="{KAFKA_PASSWORD}"'
        listeners = {
            "PLAINTEXT": self.port,
            "SASL_SSL": self.sasl_ssl_port,
            "SASL_PLAINTEXT": self.sasl_plaintext_port,
            "SSL": self.ssl_port,
        }
        login = "org.apache.kafka.common.security"
        return [
            "listeners="
            + ",".join(f"{n}://127.0.0.1:{p}" for n, p in listeners.items())
            + f",CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners=" + ",".join(f"{n}://127.0.0.1:{p}" for n, p in listeners.items()),
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,"
            "SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512",
            *(
                f"listener.name.{listener}.plain.sasl.jaas.config={login}.plain.PlainLoginModule required {plain_users};"
                for listener in ("sasl_ssl", "sasl_plaintext")
            ),
            *(
                f"listener.name.{listener}.scram-sha-512.sasl.jaas.config={login}.scram.ScramLoginModule required;"
                for listener in ("sasl_ssl", "sasl_plaintext")
            ),
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.certs.server_pem}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.certs.ca}",
            "listener.name.ssl.ssl.client.auth=required",
        ]

    def _format_options(self) -> list[str]:
        # SCRAM credentials are written into the metadata log when the storage is formatted.
        return ["--add-scram", f"SCRAM-SHA-512=[name={KAFKA_USER},password={KAFKA_PASSWORD}]"]

    def client_env(self, mode: str) -> dict[str, str]:
        """FINSENT_* settings for one way in: sasl_ssl-plain, sasl_ssl-scram, sasl_plaintext-plain,
        sasl_plaintext-scram or mtls."""
        if mode == "mtls":
            return {
                "FINSENT_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.ssl_port}",
                "FINSENT_KAFKA_SECURITY_PROTOCOL": "SSL",
                "FINSENT_KAFKA_SSL_CAFILE": str(self.certs.ca),
                "FINSENT_KAFKA_SSL_CERTFILE": str(self.certs.client_cert),
                "FINSENT_KAFKA_SSL_KEYFILE": str(self.certs.client_key),
                "FINSENT_KAFKA_SSL_KEYFILE_PASSWORD": CLIENT_KEY_PASSWORD,
            }
        protocol, mechanism = mode.split("-")
        env = {
            "FINSENT_KAFKA_SECURITY_PROTOCOL": protocol.upper(),
            "FINSENT_KAFKA_SASL_MECHANISM": {"plain": "PLAIN", "scram": "SCRAM-SHA-512"}[mechanism],
            "FINSENT_KAFKA_SASL_USERNAME": KAFKA_USER,
            "FINSENT_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
        }
        if protocol == "sasl_ssl":
            env.update(
                FINSENT_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{self.sasl_ssl_port}",
                FINSENT_KAFKA_SSL_CAFILE=str(self.certs.ca),
            )
        else:
            env["FINSENT_KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{self.sasl_plaintext_port}"
        return env


class SecuredElasticsearch(Elasticsearch):
    name = "elasticsearch-secured"
    port = 19200
    transport_port = 19300

    def __init__(self, home: Path, stack_home: Path, certs: Certificates):
        _shared_downloads(home, stack_home)
        super().__init__(home)
        self.certs = certs

    def install(self) -> None:
        super().install()
        config = self.real_dir / "config"
        for source in (self.certs.ca, self.certs.server_cert, self.certs.server_key):
            shutil.copy(source, config / source.name)
        users = subprocess.run(
            [
                str(self.install_dir / "bin" / "elasticsearch-users"),
                "useradd",
                ES_USER,
                "-p",
                ES_PASSWORD,
                "-r",
                "superuser",
            ],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if users.returncode != 0 and "already exists" not in users.stdout + users.stderr:
            raise StackError(f"elasticsearch-users failed: {users.stdout}\n{users.stderr}")
        user = self.run_as()
        if user is not None:
            subprocess.run(["chown", "-R", f"{user}:{user}", str(self.real_dir)], check=True)

    def _config(self) -> str:
        insecure = "xpack.security.enabled: false"
        secured = "\n".join(
            [
                "xpack.security.enabled: true",
                "xpack.security.http.ssl.enabled: true",
                f"xpack.security.http.ssl.certificate: {self.certs.server_cert.name}",
                f"xpack.security.http.ssl.key: {self.certs.server_key.name}",
                f"xpack.security.http.ssl.certificate_authorities: [{self.certs.ca.name}]",
                "xpack.security.authc.api_key.enabled: true",
            ]
        )
        return (
            super()
            ._config()
            .replace("cluster.name: finsent-local", "cluster.name: finsent-secured")
            .replace(insecure, secured)
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def set_file_user(self, name: str, password: str) -> None:
        """Adds a superuser to the file realm, or changes its password; the node re-reads its
        users file within seconds (the integration-test distribution has no native realm)."""
        users = self.real_dir / "config" / "users"
        exists = users.exists() and any(line.split(":")[0] == name for line in users.read_text().splitlines())
        tool = str(self.install_dir / "bin" / "elasticsearch-users")
        command = (
            [tool, "passwd", name, "-p", password]
            if exists
            else [tool, "useradd", name, "-p", password, "-r", "superuser"]
        )
        done = subprocess.run(command, env=self.environment(), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise StackError(f"elasticsearch-users failed: {done.stdout}\n{done.stderr}")
        user = self.run_as()
        if user is not None:
            subprocess.run(["chown", "-R", f"{user}:{user}", str(self.real_dir / "config")], check=True)

    def authenticates(self, name: str, password: str) -> bool:
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        auth = b64encode(f"{name}:{password}".encode()).decode()
        request = urllib.request.Request(
            self.url + "/_security/_authenticate", headers={"Authorization": f"Basic {auth}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=context):
                return True
        except urllib.error.HTTPError:
            return False

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        auth = b64encode(f"{ES_USER}:{ES_PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:  # say what Elasticsearch answered
            raise AssertionError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None

    def _get(self, path: str) -> dict | None:
        try:
            return self.request("GET", path)
        except (OSError, ValueError):
            return None

    def api_key(self, index_prefix: str) -> str:
        """An API key that may only manage finsent's templates and the ``<prefix>-*`` indices."""
        created = self.request(
            "POST",
            "/_security/api_key",
            {
                "name": f"finsent-{index_prefix}",
                "role_descriptors": {
                    "finsent": {
                        "cluster": ["manage_index_templates", "monitor"],
                        "indices": [{"names": [f"{index_prefix}-*"], "privileges": ["all"]}],
                    }
                },
            },
        )
        return created["encoded"]

    def client_env(self, auth: str, index_prefix: str) -> dict[str, str]:
        """FINSENT_* settings for HTTPS with the test CA and ``auth``: api_key or basic."""
        env = {"FINSENT_ES_HOSTS": self.url, "FINSENT_ES_CA_CERTS": str(self.certs.ca)}
        if auth == "api_key":
            env["FINSENT_ES_API_KEY"] = self.api_key(index_prefix)
        else:
            env.update(FINSENT_ES_USERNAME=ES_USER, FINSENT_ES_PASSWORD=ES_PASSWORD)
        return env
