"""images.lock.json: the digests the release workflow writes and the ems:images defaults read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from components import image_lock
from components.image_lock import LockError, parse_lock
from components.settings import Images, SettingsError, parse_settings

DIGEST = "sha256:" + "0123456789abcdef" * 4
EDGE = f"ghcr.io/ems-platform/edge-agent:0.2.0@{DIGEST}"
AWS = {"ems:cloud": "aws", "ems:region": "eu-west-1"}


def lock(**images: str) -> str:
    return json.dumps({"schema": 1, "release": "v0.2.0" if images else None,
                       "revision": ("a" * 40) if images else None, "images": images})


@pytest.fixture
def use_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the program at a lock file with the given text."""
    def write(text: str) -> None:
        path = tmp_path / "images.lock.json"
        path.write_text(text)
        monkeypatch.setattr(image_lock, "LOCK_FILE", path)
    return write


def test_published_lock_sets_the_defaults_and_overrides_still_win(use_lock) -> None:
    use_lock(lock(edgeAgent=EDGE, ingest=EDGE.replace("edge-agent", "ingest"),
                  northbound=EDGE.replace("edge-agent", "northbound")))
    images = parse_settings(AWS, "t").platform.images
    assert images.edge_agent == EDGE and images.northbound.endswith(f"/northbound:0.2.0@{DIGEST}")
    assert images.broker == Images().broker and image_lock.unpublished(images) == {}
    override = "ghcr.io/acme/ems-ingest:1.4.2"
    partial = parse_settings({**AWS, "ems:images": {"ingest": override}}, "t").platform.images
    assert (partial.ingest, partial.edge_agent) == (override, EDGE)   # the other keys keep the lock's digest
    assert image_lock.unpublished(partial) == {"ingest": override}
    published = image_lock.load_lock(image_lock.LOCK_FILE)
    assert image_lock.digest_warning(images, published) is None
    assert image_lock.digest_warning(partial, published).startswith(
        "ems:images ingest: no digest (ems:images sets them by tag), so the stack deploys the tags ghcr.io/acme/ems-ingest:1.4.2;")


def test_empty_lock_leaves_the_version_tags_and_names_them(use_lock) -> None:
    use_lock(lock())
    images = parse_settings(AWS, "t").platform.images
    assert images == Images()
    assert image_lock.digest_warning(images, image_lock.load_lock(image_lock.LOCK_FILE)).startswith(
        "ems:images edgeAgent, ingest, northbound: no digest (images.lock.json holds no digest: the release workflow "
        "has not published these images), so the stack deploys the tags ghcr.io/ems-platform/edge-agent:0.1.0, ")
    assert image_lock.unpublished(images) == {"edgeAgent": "ghcr.io/ems-platform/edge-agent:0.1.0",
                                              "ingest": "ghcr.io/ems-platform/ingest:0.1.0",
                                              "northbound": "ghcr.io/ems-platform/northbound:0.1.0"}


@pytest.mark.parametrize("text,message", [
    ("not json", "images.lock.json: (file): 'not json' is not JSON: Expecting value at line 1"),
    ("[]", "images.lock.json: (file): [] must be a JSON object"),
    (json.dumps({"schema": 2, "release": None, "images": {}}), "images.lock.json: schema: 2 must be 1"),
    (json.dumps({"schema": 1, "release": None, "images": {}, "extra": 1}), "images.lock.json: extra: 1 is not a lock field"),
    (lock(edgeAgent="ghcr.io/ems-platform/edge-agent:0.2.0"),
     "images.lock.json: images.edgeAgent: 'ghcr.io/ems-platform/edge-agent:0.2.0' has no digest; expected REPOSITORY[:TAG]@sha256:<64 hex>"),
    (lock(edgeAgent="ghcr.io/ems-platform/edge-agent@sha256:" + "AB" * 32),
     "images.lock.json: images.edgeAgent: 'ghcr.io/ems-platform/edge-agent@sha256:ABAB"),
    (lock(edgeAgent="ghcr.io/ems-platform/edge-agent@sha256:abc"), "images.edgeAgent: 'ghcr.io/ems-platform/edge-agent@sha256:abc' is not"),
    (lock(edgeAgent=f"edge-agent@{DIGEST}"), "images.edgeAgent: 'edge-agent@sha256:0123"),
    (lock(broker=f"docker.io/library/eclipse-mosquitto@{DIGEST}"),
     "images.broker: 'docker.io/library/eclipse-mosquitto@sha256:0123456789abcdef"),
    (lock(edgeAgent=7), "images.lock.json: images.edgeAgent: 7 must be a string"),
    (json.dumps({"schema": 1, "release": "v0.2.0", "images": {}}), "release: 'v0.2.0' must be set exactly when images holds digests"),
    (json.dumps({"schema": 1, "release": "0.2", "images": {"edgeAgent": EDGE}}), "release: '0.2' must be null or a version tag"),
    (json.dumps({"schema": 1, "release": "v0.2.0", "revision": "HEAD", "images": {"edgeAgent": EDGE}}),
     "revision: 'HEAD' must be null or a 40-hex commit"),
])
def test_bad_lock_names_the_field_and_the_value(text: str, message: str) -> None:
    with pytest.raises(LockError) as info:
        parse_lock(text)
    assert str(info.value).startswith(message) or message in str(info.value), str(info.value)


def test_a_bad_lock_stops_the_program_with_a_settings_error(use_lock) -> None:
    use_lock(lock(ingest="ghcr.io/ems-platform/ingest:0.2.0"))
    with pytest.raises(SettingsError, match=r"^ems:images: defaults cannot be read: .*images.lock.json: images.ingest: "
                                            r"'ghcr.io/ems-platform/ingest:0.2.0' has no digest"):
        parse_settings(AWS, "t")


def test_missing_lock_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LockError, match="cannot be read"):
        image_lock.load_lock(tmp_path / "absent.json")


def test_environment_is_validated_and_defaults_to_development() -> None:
    assert parse_settings(AWS, "t").platform.environment == "development"
    assert parse_settings({**AWS, "ems:environment": "production"}, "t").platform.environment == "production"
    with pytest.raises(SettingsError, match=r"^ems:environment: prod is not one of production\|staging\|development$"):
        parse_settings({**AWS, "ems:environment": "prod"}, "t")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                              max_leaves=20).map(json.dumps)))
def test_any_text_either_parses_or_raises_lock_error(text: str) -> None:
    try:
        parsed = parse_lock(text)
    except LockError:
        return
    assert all(image_lock.DIGEST_REF.fullmatch(ref) for ref in parsed.images.values())
