"""The ssh-copy transport's pieces on the host: the image store (an OCI layout), the read-only registry that
serves it (in-process through httpx, and on a real loopback socket) with its byte count, and the checks of
what a direct deploy is given (USER@HOST, references, versions). The SSH half runs in
tests/e2e/test_deploy_direct.py against a simulated robot."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.direct import dev_version, model_source, parse_target, target_robot
from edge_deploy.fleet.inventory import InvalidRobotField
from edge_deploy.fleet.transport import (
    ImageStore,
    Served,
    check_transport,
    registry_app,
    serving,
    split_digest_ref,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_layout(root: Path, layers: list[bytes], platform: str = "linux/arm64") -> dict[str, str]:
    """A one-image OCI layout as buildx's ``type=oci,tar=false`` writes it: index.json → index → manifest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        d = digest(data)
        (blobs / d.split(":")[1]).write_bytes(data)
        return d

    config = put(b'{"architecture": "arm64", "os": "linux"}')
    layer_ds = [put(x) for x in layers]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d} for d in layer_ds
            ],
        }
    ).encode()
    m = put(manifest)
    os_name, arch = platform.split("/")
    attestation = put(b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "layers": []}')
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": m, "platform": {"os": os_name, "architecture": arch}},
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": attestation,
                    "platform": {"os": "unknown", "architecture": "unknown"},
                },
            ],
        }
    ).encode()
    i = put(index)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{"digest": i}]}))
    return {"index": i, "manifest": m, "config": config, **{f"layer{n}": d for n, d in enumerate(layer_ds)}}


@pytest.fixture
def store(tmp_path: Path) -> tuple[ImageStore, dict[str, str]]:
    ds = write_layout(tmp_path / "layout", [b"base layer " * 1000, b"model layer"])
    st = ImageStore(tmp_path / "store")
    assert st.add_layout(tmp_path / "layout") == ds["index"]
    return st, ds


def test_store_closure_is_what_a_pull_for_the_platform_reads(
    store: tuple[ImageStore, dict[str, str]],
) -> None:
    st, ds = store
    got = [d for d, _ in st.closure(ds["index"], "linux/arm64")]
    assert got == [ds["index"], ds["manifest"], ds["config"], ds["layer0"], ds["layer1"]]  # no attestation
    assert st.missing(ds["index"], "linux/arm64") == []
    st.blob(ds["layer1"]).unlink()
    assert st.missing(ds["index"], "linux/arm64") == [ds["layer1"]]
    with pytest.raises(FleetError, match="no linux/amd64 variant"):
        list(st.closure(ds["index"], "linux/amd64"))


def test_store_refuses_a_blob_whose_content_is_not_its_digest(tmp_path: Path) -> None:
    st = ImageStore(tmp_path)
    with pytest.raises(FleetError, match="refusing it"):
        st.put(b"tampered", digest(b"original"))
    assert not st.has(digest(b"original"))
    st.put(b"original", digest(b"original"))
    assert st.blob(digest(b"original")).read_bytes() == b"original"


def test_registry_serves_manifests_and_blobs_by_digest_and_counts_bytes(
    store: tuple[ImageStore, dict[str, str]],
) -> None:
    st, ds = store
    served = Served()

    async def go() -> None:
        transport = httpx.ASGITransport(app=registry_app(st, served))
        async with httpx.AsyncClient(transport=transport, base_url="http://robot") as http:
            assert (await http.get("/v2/")).status_code == 200
            head = await http.head(f"/v2/edge-deploy/runtime/manifests/{ds['index']}")
            assert head.headers["content-type"] == OCI_INDEX
            assert head.headers["docker-content-digest"] == ds["index"]
            assert served.bytes == 0  # a HEAD moves no content
            m = await http.get(f"/v2/edge-deploy/runtime/manifests/{ds['manifest']}")
            assert m.headers["content-type"] == OCI_MANIFEST and digest(m.content) == ds["manifest"]
            blob = await http.get(f"/v2/edge-deploy/runtime/blobs/{ds['layer0']}")
            assert digest(blob.content) == ds["layer0"]
            assert int(blob.headers["content-length"]) == len(blob.content)
            assert served.bytes == len(m.content) + len(blob.content)
            assert served.blobs == [ds["layer0"]]
            assert (await http.get("/v2/edge-deploy/runtime/manifests/latest")).status_code == 404  # no tags
            assert (await http.get(f"/v2/x/blobs/{digest(b'absent')}")).status_code == 404
            assert (await http.get("/v2/x/blobs/sha256:../../etc")).status_code == 404

    asyncio.run(go())


def test_registry_listens_on_loopback_for_the_block_only(store: tuple[ImageStore, dict[str, str]]) -> None:
    st, ds = store
    served = Served()

    async def go() -> int:
        async with serving(st, served) as port, httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{port}/v2/any/blobs/{ds['layer0']}")
            assert digest(r.content) == ds["layer0"]
        return port

    port = asyncio.run(go())
    assert served.bytes == st.blob(ds["layer0"]).stat().st_size
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=5)


@pytest.mark.parametrize(
    "ref",
    [
        "edge-deploy.local/edge-deploy/runtime:latest",
        "runtime@sha256:1234",
        "@sha256:" + "a" * 64,
        "localhost:5000/x@md5:" + "a" * 64,
    ],
)
def test_ssh_copy_needs_a_digest_reference(ref: str) -> None:
    with pytest.raises(FleetError, match="not pinned by digest"):
        split_digest_ref(ref)


def test_digest_reference_parts() -> None:
    d = "sha256:" + "b" * 64
    assert split_digest_ref(f"localhost:5000/edge-deploy/runtime@{d}") == (
        "localhost:5000/edge-deploy/runtime",
        "edge-deploy/runtime",
        d,
    )
    assert split_digest_ref(f"edge-deploy/runtime@{d}")[1] == "edge-deploy/runtime"


def test_transport_names() -> None:
    assert check_transport("ssh-copy") == "ssh-copy"
    with pytest.raises(FleetError, match="use one of registry, ssh-copy"):
        check_transport("scp")


@pytest.mark.parametrize("to", ["robot", "robot@", "@host", "a@b@c", "robot@host name"])
def test_target_must_be_user_at_host(to: str) -> None:
    with pytest.raises(FleetError, match="USER@HOST"):
        parse_target(to)


@pytest.mark.parametrize(
    ("user", "host", "fields", "bad"),
    [
        ("robot", "host;reboot", {}, "host"),
        ("-oProxyCommand=x", "10.0.0.2", {}, "user"),
        ("robot", "10.0.0.2", {"port": 70000}, "port"),
    ],
)
def test_target_fields_are_checked_as_the_inventory_does(
    user: str, host: str, fields: dict[str, object], bad: str
) -> None:
    with pytest.raises(InvalidRobotField) as err:
        target_robot(host, user=user, **fields)
    assert err.value.field == bad


def test_target_jetson_model_is_one_of_the_table() -> None:
    from edge_runtime.errors import EdgeError

    with pytest.raises(EdgeError, match="orin;ls"):
        target_robot("10.0.0.2", jetson_model="orin;ls")
    assert target_robot("10.0.0.2", user="robot", jetson_model="orin_nano").name == "10.0.0.2"


def test_model_source_accepts_model_files_and_bundles_only(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="does not exist"):
        model_source(tmp_path / "absent.pt")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FleetError, match="not a model file"):
        model_source(tmp_path / "notes.txt")
    with pytest.raises(FleetError, match="not a model bundle"):
        model_source(tmp_path)
    (tmp_path / "policy.pt").write_bytes(b"x")
    assert model_source(tmp_path / "policy.pt") == tmp_path / "policy.pt"


def test_dev_versions_are_semantic_and_follow_the_model() -> None:
    from edge_deploy.release.tags import normalize_version

    a, b = dev_version("ab" * 32, "c0ffee"), dev_version("cd" * 32, "c0ffee")
    assert a != b and a == "0.0.0-dev.abababababab"
    assert normalize_version(dev_version("0123456789" * 7, "")) == "0.0.0-dev.g012345678901"
    assert dev_version("", "") == "0.0.0-dev.local"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["deploy", "--to", "nohost", "policy.pt"], "USER@HOST"),
        (["deploy", "--to", "robot@host;reboot", "policy.pt"], "invalid 'host'"),
        (["deploy", "--to", "robot@10.0.0.2", "--jetson-model", "tx9", "policy.pt"], "tx9"),
        (["deploy", "--to", "robot@10.0.0.2", "absent.pt"], "does not exist"),
        (["fleet", "rollout", "0.1.0", "--transport", "scp"], "'scp' is not one of"),
    ],
)
def test_cli_refuses_bad_targets_in_one_sentence(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    said: str,
) -> None:
    from tests.build.cli_helpers import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGE_FLEET", raising=False)
    code, _, err = run_cli(capsys, *args)
    assert code != 0 and said in err, err
    assert "Traceback" not in err


def test_registries_of_several_robots_leave_the_tools_sigint_alone(
    store: tuple[ImageStore, dict[str, str]],
) -> None:
    import signal

    st, ds = store
    before = signal.getsignal(signal.SIGINT)

    async def one(pause: float) -> int:
        served = Served()
        async with serving(st, served) as port, httpx.AsyncClient() as http:
            await asyncio.sleep(pause)
            await http.get(f"http://127.0.0.1:{port}/v2/any/blobs/{ds['layer1']}")
        return served.bytes

    async def robots() -> list[int]:
        return list(await asyncio.gather(one(0.2), one(0.0), one(0.1)))  # they stop out of start order

    assert asyncio.run(robots()) == [len(b"model layer")] * 3
    assert signal.getsignal(signal.SIGINT) is before


def test_a_rollback_to_a_release_not_kept_uses_ssh_copy_when_the_host_store_holds_it(
    store: tuple[ImageStore, dict[str, str]], tmp_path: Path
) -> None:
    from edge_deploy.fleet.options import RollbackOptions, deploy_request
    from edge_deploy.fleet.transport import rollback_transport
    from edge_deploy.release.manifest import ReleaseManifest

    st, ds = store
    ref = f"edge-deploy.local/edge-deploy/runtime@{ds['index']}"
    arm = {"linux/arm64"}
    assert rollback_transport(ref, arm, None, st.root) == "ssh-copy"
    assert rollback_transport(ref, arm, "registry", st.root) == "registry"  # the operator's choice wins
    assert rollback_transport(ref, {"linux/amd64"}, None, st.root) == "registry"  # no such variant held
    assert rollback_transport(ref, arm, None, tmp_path / "empty") == "registry"
    st.blob(ds["layer1"]).unlink()
    assert rollback_transport(ref, arm, None, st.root) == "registry"  # a store missing a layer cannot serve
    assert rollback_transport(ref, arm, "ssh-copy", st.root) == "ssh-copy"
    with pytest.raises(FleetError, match="Unknown image transport 'scp'"):
        rollback_transport(ref, arm, "scp", st.root)

    manifest = ReleaseManifest.for_runtime_image("0.1.0", ref, "local")
    opts = RollbackOptions(to="0.1.0", transport="ssh-copy", image_store=st.root)
    req = deploy_request(manifest, opts, signed=False, known={})
    assert (req.transport, req.image_store, req.action, req.force) == ("ssh-copy", st.root, "rollback", True)
    assert (
        deploy_request(manifest, RollbackOptions(to="0.1.0"), signed=False, known={}).transport == "registry"
    )
